"""Every example in the documentation runs, on the backend under test.

- The doctests (`>>>` examples) of every normkit module.
- Every ```python block of README.md and of docs/**/*.md. The blocks of one page run in order in one namespace,
  as a reader would paste them, in a temporary working directory. A ```python block that is directly followed by
  a ```text block must print exactly that text. Blocks in other languages (```bash, ```text) are not run.
- A block that cannot run here opts out with an HTML comment on the line just before its fence, giving the
  reason, e.g. `<!-- docs-test: skip (keras.datasets downloads MNIST) -->`; the comment is not shown on the site.

It also checks the one claim of docs/distributed.md that is about other code than normkit's own (JAX's
DataParallel reduces a sharded batch axis globally) and that no page points at a file outside the repository.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import keras
import pytest

import normkit

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SKIP_MARKER = "<!-- docs-test: skip"
FENCE = re.compile(r"^```\s*([\w+-]*)")


@dataclass
class CodeBlock:
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    skip_reason: str | None
    expected_output: str | None  # the ```text block right after it, if any


def code_blocks(page: Path) -> list[CodeBlock]:
    """The fenced blocks of a Markdown page, each with its opt-out marker and the output block after it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    closes: list[int] = []  # the line index of each block's closing fence
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{start + 1}: a code fence is never closed")
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip_reason = previous.strip() if previous.strip().startswith(SKIP_MARKER) else None
        blocks.append(CodeBlock(match.group(1).lower(), "\n".join(lines[start + 1 : i]), start + 1, skip_reason, None))
        closes.append(i)
        i += 1
    for index, block in enumerate(blocks[:-1]):
        following = blocks[index + 1]
        between = lines[closes[index] + 1 : following.line - 1]
        if block.language == "python" and following.language == "text" and not any(s.strip() for s in between):
            block.expected_output = following.code
    return blocks


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runnable_blocks(page: Path) -> list[CodeBlock]:
    return [b for b in code_blocks(page) if b.language == "python" and b.skip_reason is None]


# Only the pages with something to run: a page without examples is no test.
@pytest.mark.parametrize("page", [p for p in PAGES if _runnable_blocks(p)], ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch):
    runnable = _runnable_blocks(page)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for block in runnable:
        where = f"{_page_id(page)}:{block.line}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(block.code, where, "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the example at {where} failed: {error!r}") from error
        if block.expected_output is not None:
            got = "\n".join(line.rstrip() for line in printed.getvalue().rstrip("\n").splitlines())
            want = "\n".join(line.rstrip() for line in block.expected_output.rstrip("\n").splitlines())
            assert got == want, f"{where} printed\n{got}\nbut the page shows\n{want}"


def test_skip_markers_give_a_reason():
    for page in PAGES:
        for block in code_blocks(page):
            if block.skip_reason is not None:
                assert re.fullmatch(r"<!-- docs-test: skip \(.+\) -->", block.skip_reason), (
                    f"{_page_id(page)}:{block.line}: write the marker as `<!-- docs-test: skip (reason) -->`"
                )


def test_the_block_reader_finds_blocks_outputs_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent(
            """\
            ```python
            print(1)
            ```

            ```text
            1
            ```

            <!-- docs-test: skip (needs the network) -->
            ```python
            download()
            ```

            ```bash
            normkit --help
            ```
            """
        )
    )
    blocks = code_blocks(page)
    assert [(b.language, b.line) for b in blocks] == [("python", 1), ("text", 5), ("python", 10), ("bash", 14)]
    assert blocks[0].expected_output == "1" and blocks[0].skip_reason is None
    assert blocks[2].skip_reason == "<!-- docs-test: skip (needs the network) -->"
    assert blocks[2].expected_output is None


def _normkit_modules() -> list[str]:
    names = ["normkit"]
    for info in pkgutil.walk_packages(normkit.__path__, prefix="normkit."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _docstring_examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.examples]


# Only the modules whose docstrings hold examples (every module is imported to find them).
@pytest.mark.parametrize("module_name", [m for m in _normkit_modules() if _docstring_examples(m)])
def test_docstring_examples(module_name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = _docstring_examples(module_name)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def test_no_page_points_outside_the_repository():
    # the project's behaviour document is docs/behaviour.md; nothing may send a reader to a file it does not ship
    outside = re.compile(r"shared/|" + "SPEC" + r"\.md|seeds/\d")
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            assert not outside.search(line), f"{_page_id(page)}:{number}: {line}"


DATA_PARALLEL_CHECK = """
import numpy as np, jax, keras, normkit
assert len(jax.devices()) == 2, jax.devices()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
rng = np.random.default_rng(0)
# the two halves of the batch (one per device) have very different statistics
x = np.concatenate([rng.normal(0.0, 1.0, (4, 3)), rng.normal(10.0, 3.0, (4, 3))]).astype("float32")
layer = normkit.BatchNormalization(momentum=0.0)
model = keras.Sequential([keras.Input((3,)), layer])
model.compile(optimizer="sgd", loss="mse")
model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
mean = keras.ops.convert_to_numpy(layer.moving_mean)
variance = keras.ops.convert_to_numpy(layer.moving_variance)
assert np.allclose(mean, x.mean(axis=0), rtol=1e-4, atol=1e-4), (mean, x.mean(axis=0))
assert np.allclose(variance, x.var(axis=0), rtol=1e-4), (variance, x.var(axis=0))
print("global statistics")
"""


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a claim about the JAX backend")
def test_jax_data_parallel_gives_global_batch_statistics():
    """docs/distributed.md: under DataParallel on two devices, batch statistics are those of the whole batch."""
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL_CHECK], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("global statistics")
