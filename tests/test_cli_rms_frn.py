"""`normkit compare --norms rms,frn` and the diagram panels of RMS and filter response normalization."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from _cli_helpers import tiny_npz

import normkit
from normkit.cli import diagram as diagram_mod
from normkit.cli import main, norms

pytestmark = pytest.mark.slow


def test_compare_rms_and_frn(tmp_path: Path) -> None:
    data = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "study"
    argv = ["compare", "--dataset", str(data), "--out", str(out), "--epochs", "1", "--seeds", "0",
            "--backend", keras.backend.backend(), "--norms", "rms,frn", "--batch-sizes", "16", "--progress", "none"]
    assert main(argv) == 0
    records = {r["norm"]: r for r in (json.loads(p.read_text()) for p in (out / "runs").glob("*.json"))}
    assert set(records) == {"rms", "frn"}
    assert records["rms"]["layer_call"] == "RMSNormalization(axis=3)"
    assert records["frn"]["layer_call"] == "Sequential([FilterResponseNormalization(), TLU()])"
    # FRN's gamma and beta (2 x 10) and TLU's per-element tau (26 x 26 x 10), counted as one norm block.
    assert records["frn"]["norm_params"] == 2 * 10 + 26 * 26 * 10
    assert records["rms"]["norm_params"] == 10
    for record in records.values():
        assert np.isfinite(record["test_loss"])


def test_frn_block_is_frn_then_tlu() -> None:
    block = norms.spec("frn", 8, 4).factory()
    assert [type(layer) for layer in block.layers] == [normkit.FilterResponseNormalization, normkit.TLU]


@pytest.mark.parametrize(
    "kind, axis, highlighted, means",
    [
        ("rms", 3, 10, 16),  # one sample, one position, all channels (like the seed's LayerNormalization)
        ("rms", [1, 2, 3], 40, 4),  # one sample, everything
        ("frn", -1, 4, 40),  # one sample, one channel, over H and W (like instance normalization)
    ],
)
def test_diagram_sharing(kind, axis, highlighted, means) -> None:
    panel = diagram_mod.panel_for(kind, 0, axis, (4, 2, 2, 10))
    assert int(panel.cube.sum()) == highlighted
    assert f"{means} means, each over {highlighted} elements" in panel.caption


def test_diagram_default_figure_has_rms_and_frn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default figure's panels (drawing them is test_cli's job: seven 3-D panels take seconds)."""
    drawn: list = []
    monkeypatch.setattr(diagram_mod, "draw", lambda panels, path: drawn.extend(panels) or path)
    assert main(["diagram", "--out", str(tmp_path / "all.png")]) == 0
    titles = [panel.title for panel in drawn]
    assert len(titles) == 7
    assert titles[-2].endswith("RMSNormalization(axis=3)")
    assert titles[-1].endswith("FilterResponseNormalization()")
    assert int(drawn[-1].cube.sum()) == 4  # one sample, one channel, over H and W


@pytest.mark.parametrize("kind", ["rms", "frn"])
def test_diagram_draws_one_rms_or_frn_configuration(tmp_path: Path, kind: str) -> None:
    out = tmp_path / kind
    assert main(["diagram", "--layer", kind, "--out", str(out), "--backend", keras.backend.backend()]) == 0
    assert out.with_suffix(".png").stat().st_size > 1000
