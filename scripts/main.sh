#!/usr/bin/env bash
# The main job on a fresh machine: installs normkit (JAX backend) into .venv and runs `normkit compare`
# (the seed tutorial's model trained with each normalization on scikit-learn's digits). Arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "jax,compare"
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg
exec .venv/bin/normkit compare "$@"
