"""The benchmark's cases: which layer, which shape, which dtype policy, and the matching Keras built-in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    layer: str  # GroupNormalization | InstanceNormalization | LayerNormalization | BatchNormalization
    shape: tuple[int, ...]
    groups: int = 32
    policy: str = "float32"

    @property
    def label(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        suffix = "" if self.policy == "float32" else f" {self.policy}"
        extra = f"({self.groups})" if self.layer == "GroupNormalization" else ""
        return f"{self.layer.replace('Normalization', 'Norm')}{extra} {shape}{suffix}"


def full_cases() -> list[Case]:
    cases: list[Case] = []
    for shape in ((32, 56, 56, 64), (8, 32, 32, 256)):
        tag = "x".join(map(str, shape))
        cases += [
            Case(f"gn_{tag}", "GroupNormalization", shape),
            Case(f"in_{tag}", "InstanceNormalization", shape),
            Case(f"ln_{tag}", "LayerNormalization", shape),
            Case(f"bn_{tag}", "BatchNormalization", shape),
        ]
    cases += [
        Case("ln_transformer", "LayerNormalization", (64, 512, 768)),
        Case("bn_dense", "BatchNormalization", (1024, 1024)),
        Case("gn_bf16", "GroupNormalization", (32, 56, 56, 64), policy="mixed_bfloat16"),
        Case("ln_bf16", "LayerNormalization", (64, 512, 768), policy="mixed_bfloat16"),
        Case("bn_bf16", "BatchNormalization", (32, 56, 56, 64), policy="mixed_bfloat16"),
    ]
    return cases


def smoke_cases() -> list[Case]:
    return [
        Case("gn_smoke", "GroupNormalization", (2, 8, 8, 16), groups=4),
        Case("in_smoke", "InstanceNormalization", (2, 8, 8, 16)),
        Case("ln_smoke", "LayerNormalization", (4, 8, 32)),
        Case("bn_smoke", "BatchNormalization", (16, 32)),
    ]


def best_native(ms: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """Per mode, the fastest of the native variants (torch GroupNorm: NCHW-contiguous vs channels_last) and
    its name, from a row's times."""
    natives = [k for k in ms if k.startswith("native")]
    best = {m: min(ms[k][m] for k in natives) for m in ("fwd", "fwdbwd")}
    name = {m: min(natives, key=lambda k, m=m: ms[k][m]) for m in ("fwd", "fwdbwd")}
    return best, name
