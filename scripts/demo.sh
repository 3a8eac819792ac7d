#!/usr/bin/env bash
# The README's demo: builds libpeftswift.so, then runs the C, C++ and Python examples against
# it (installing what this machine lacks first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
echo "== building libpeftswift.so"
scripts/build-lib.sh >/dev/null
export PKG_CONFIG_PATH="$root/dist/lib/pkgconfig"
bin="$root/examples/bin"
mkdir -p "$bin"
cc -std=c11 -Wall -Wextra -O2 examples/quantize.c $(pkg-config --cflags --libs peftswift) -lm -o "$bin/quantize"
c++ -std=c++17 -Wall -Wextra -O2 examples/quantize.cpp $(pkg-config --cflags --libs peftswift) -o "$bin/quantize_cpp"
echo "== examples/quantize.c"; "$bin/quantize"
echo "== examples/quantize.cpp"; "$bin/quantize_cpp"
echo "== examples/quantize.py"
python3 -m pip install -q --no-build-isolation ./bindings/python
python3 examples/quantize.py
echo "== examples/train_qlora.py"
python3 examples/train_qlora.py
