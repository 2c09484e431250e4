#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs everything into .venv, lints, then runs pytest once per
# Keras backend (jax, tensorflow, torch), builds the documentation site (mkdocs build --strict) and checks the
# package (scripts/check_package.sh: sdist + wheel, installed in a fresh virtualenv, a smoke test from outside
# the checkout), and prints one total line. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "jax,tensorflow,torch,compare,docs,test" || exit 1
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
.venv/bin/python -m ruff check normkit tests _normkit_console.py || exit 1
reports=$(mktemp -d)
status=0
for backend in ${NORMKIT_BACKENDS:-jax tensorflow torch}; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -p no:cacheprovider --junitxml="$reports/$backend.xml" "$@"
  rc=$?
  # pytest's 5 means "no tests collected" (e.g. a -k filter that matched nothing): not a failure here.
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=1; fi
done
echo "=== documentation site: mkdocs build --strict ==="
site=$(mktemp -d)
if .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$site"; then
  echo "site built: $(find "$site" -name index.html | wc -l) pages"
else
  echo "mkdocs build --strict failed"
  status=1
fi
rm -rf "$site"
echo "=== packaging: scripts/check_package.sh ==="
bash scripts/check_package.sh || { echo "packaging check failed"; status=1; }
.venv/bin/python scripts/junit_total.py "$reports"/*.xml || status=1
exit $status
