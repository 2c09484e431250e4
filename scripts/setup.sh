#!/usr/bin/env bash
# Creates .venv (once) and installs normkit with the extras named in $@ (e.g. "jax,compare").
# Only Python >= 3.10 is needed on the machine. torch is pinned to the CPU build this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="$1"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=".venv/.normkit-installed-$(echo "$extras" | tr ',' '-')-$(cat pyproject.toml scripts/setup.sh | cksum | cut -d' ' -f1)"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  pins=()
  case ",$extras," in *,torch,*) pins+=("torch==2.13.0") ;; esac
  .venv/bin/python -m pip install -q --disable-pip-version-check "${pins[@]}" -e ".[${extras}]"
  touch "$stamp"
fi
