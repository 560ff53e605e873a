#!/usr/bin/env bash
# The README's test command: installs pix2seq_d with its test extras, runs ruff (lint, then the
# format check), then every test, slow ones included (pass -m "not slow" for the quick subset).
set -euo pipefail
cd "$(dirname "$0")/.."
# Installs are serialised: two runs at once (two clones, or one twice) would race on pip's files.
pip_install() {
  if command -v flock >/dev/null 2>&1; then
    mkdir -p "$HOME/.cache/pix2seq_d"
    flock "$HOME/.cache/pix2seq_d/install.lock" python -m pip install -q "$@"
  else
    python -m pip install -q "$@"
  fi
}
pip_install -e '.[test]'
# The reference PQ implementation; its metadata pins old numpy, so it is installed without deps.
pip_install --no-deps 'panopticapi-lite>=0.2'
python -m ruff check .
python -m ruff format --check .
# Compiled XLA programs persist between runs (and are shared by the test subprocesses).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/pix2seq_d/jax-tests}
python -m pytest -q -n "${PYTEST_WORKERS:-2}" --durations=15 tests "$@"
