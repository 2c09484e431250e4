#!/usr/bin/env bash
# The package as a user gets it: builds the sdist and the wheel (the wheel from the sdist, as pip would), installs
# the wheel into a fresh virtualenv that sees no system or project packages (Keras and the JAX CPU build, then the
# wheel without its dependencies), and runs a smoke test from a directory outside the checkout.
# Run by scripts/test.sh after .venv exists; prints what it checks and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS

echo "--- python -m build (sdist, then the wheel from it)"
if ! .venv/bin/python -m build --outdir "$work/dist" . > "$work/build.log" 2>&1; then
  cat "$work/build.log"
  exit 1
fi
ls "$work/dist"
wheel=$(ls "$work"/dist/normkit-*.whl)
sdist=$(ls "$work"/dist/normkit-*.tar.gz)
.venv/bin/python - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
for needed in ("normkit/__init__.py", "normkit/py.typed", "_normkit_console.py"):
    assert needed in names, f"the wheel lacks {needed}"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the wheel lacks LICENSE"
assert not any(n.startswith(("tests/", "docs/")) for n in names), "the wheel ships tests or docs"
members = tarfile.open(sdist).getnames()
for needed in ("LICENSE", "README.md", "pyproject.toml", "normkit/py.typed", "_normkit_console.py"):
    assert any(m.endswith("/" + needed) for m in members), f"the sdist lacks {needed}"
print(f"wheel: {len(names)} files, sdist: {len(members)} members; py.typed, LICENSE and the console module in both")
PY

echo "--- a fresh virtualenv: keras, jax[cpu], then the wheel with --no-deps"
python_bin=$(.venv/bin/python -c "import sys; print(sys._base_executable)")
"$python_bin" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" keras "jax[cpu]" 2> "$work/pip.log" || { cat "$work/pip.log"; exit 1; }
"${pip[@]}" --no-deps "$wheel" 2> "$work/pip.log" || { cat "$work/pip.log"; exit 1; }
"$work/venv/bin/python" -m pip list --disable-pip-version-check 2> /dev/null | grep -iE "^(normkit|keras|jax|jaxlib) "

echo "--- smoke test from $work/outside (not the checkout)"
mkdir "$work/outside"
cd "$work/outside"
export TF_CPP_MIN_LOG_LEVEL=2 KERAS_BACKEND=jax  # the backend this virtualenv has (Keras' default is tensorflow)
"$work/venv/bin/python" - <<'PY'
import importlib.util, os, subprocess, sys

import normkit

assert os.path.realpath(normkit.__file__).startswith(os.path.realpath(sys.prefix)), normkit.__file__
assert importlib.util.find_spec("normkit.cli") is not None
print(f"import normkit {normkit.__version__} from {os.path.dirname(normkit.__file__)}")
layer_check = (
    "import numpy as np, keras, normkit;"
    "x = np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 4, 6)).astype('float32');"
    "y = keras.ops.convert_to_numpy(normkit.GroupNormalization(groups=3)(x));"
    "g = y[0, :, :, :2];"
    "assert abs(g.mean()) < 1e-4 and abs(g.var() - 1) < 1e-3, (g.mean(), g.var());"
    "print(keras.backend.backend(), 'GroupNormalization ok')"
)
backends = [b for b in ("jax", "tensorflow", "torch") if importlib.util.find_spec(b if b != "jax" else "jaxlib")]
assert backends, "no backend installed"
for backend in backends:
    subprocess.run([sys.executable, "-c", layer_check], check=True, env=dict(os.environ, KERAS_BACKEND=backend))
PY
normkit_bin="$work/venv/bin/normkit"
for flag in --version --help; do
  start_ns=$(date +%s%N)
  "$normkit_bin" "$flag" > "$work/out.txt" 2> "$work/err.txt" || { echo "normkit $flag failed:"; cat "$work/err.txt"; exit 1; }
  elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  if [ -s "$work/err.txt" ]; then echo "normkit $flag wrote to stderr:"; cat "$work/err.txt"; exit 1; fi
  echo "normkit $flag: $(head -n 1 "$work/out.txt") ($(wc -l < "$work/out.txt") lines, ${elapsed_ms} ms)"
done
metadata_version=$("$work/venv/bin/python" -c "import importlib.metadata as m; print(m.version('normkit'))")
[ "$("$normkit_bin" --version)" = "normkit $metadata_version" ] || { echo "--version disagrees with the metadata"; exit 1; }
head -n 1 "$work/out.txt" | grep -q "^usage: normkit" || { echo "--help printed no usage line"; exit 1; }
echo "--- packaging check passed in $((SECONDS - started)) s"
