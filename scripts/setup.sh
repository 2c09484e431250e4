#!/usr/bin/env bash
# Creates .venv (once) and installs normkit with the extras named in $@ (e.g. "jax,compare").
# Only Python >= 3.10 is needed on the machine. The backend extras name the builds a user's machine may already
# have (tensorflow, jax: GPU-capable); this test machine has no GPU, so the CPU-only builds it is tested with
# (tensorflow-cpu, jax[cpu], torch 2.13.0) are installed in their place, and those extras are not requested.
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
  cpu_builds=()
  other_extras=()
  IFS=',' read -r -a requested <<< "$extras"
  for extra in "${requested[@]}"; do
    case "$extra" in
      jax) cpu_builds+=("jax[cpu]>=0.4.30") ;;
      tensorflow) cpu_builds+=("tensorflow-cpu>=2.16") ;;
      torch) cpu_builds+=("torch==2.13.0") ;;
      *) other_extras+=("$extra") ;;
    esac
  done
  target="."
  if [ ${#other_extras[@]} -gt 0 ]; then target=".[$(IFS=','; echo "${other_extras[*]}")]"; fi
  .venv/bin/python -m pip install -q --disable-pip-version-check "${cpu_builds[@]}" -e "$target"
  touch "$stamp"
fi
