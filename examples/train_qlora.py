"""examples/train_qlora.py: QLoRA on one layer. A frozen NF4 + double-quantized base learns,
through a rank-8 adapter, to imitate a teacher layer (the base plus a hidden low-rank change).
Prints the loss falling; checks a saved-and-reloaded adapter gives the same outputs.

    python3 -m pip install ./bindings/python && python3 examples/train_qlora.py
"""
import io

import numpy as np

import peftswift

rng = np.random.default_rng(0)
IN, OUT, R, BATCH, STEPS = 512, 256, 8, 64, 200

# the frozen base, quantized as QLoRA does (nf4, blocks of 64, double quantization)
w = (rng.standard_normal((OUT, IN)) / np.sqrt(IN)).astype(np.float32)
packed, state = peftswift.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
layer = peftswift.LoraLinear.quantized(packed, state)
layer.add_adapter("default", r=R, lora_alpha=16, lora_dropout=0.0, seed=1)

# the teacher: the same (dequantized) base plus a hidden rank-4 change
w_deq = layer.base_weight()
hidden = (rng.standard_normal((OUT, 4)) @ rng.standard_normal((4, IN)) * 0.05).astype(np.float32)
teacher = w_deq + hidden

# AdamW (torch's semantics) on the adapter's own tensors: views of the engine's memory,
# updated in place; its state lives in a pager with a small RAM budget
pager = peftswift.Pager(budget_bytes=16 << 20, page_size=1 << 20)
opt = peftswift.AdamW(layer.parameters("default"), lr=2e-2, weight_decay=0.0, optim_bits=32, pager=pager)
for step in range(1, STEPS + 1):
    x = rng.standard_normal((BATCH, IN)).astype(np.float32)
    y = layer.forward(x)
    err = y - x @ teacher.T
    loss = float(np.mean(err ** 2))
    opt.zero_grad()
    layer.backward((2.0 / err.size) * err, need_dx=False)
    opt.set_lr(2e-2 * peftswift.lr_multiplier("cosine", step - 1, warmup_steps=10, total_steps=STEPS))
    opt.step()
    if step == 1 or step % 25 == 0:
        print(f"step {step:4d}  loss {loss:.6f}")

# save the adapter (A, B) and reload it into a fresh layer over the same base: same outputs
buf = io.BytesIO()
np.savez(buf, A=layer.lora_A(), B=layer.lora_B())
buf.seek(0)
saved = np.load(buf)
again = peftswift.LoraLinear.quantized(packed, state)
again.add_adapter("default", r=R, lora_alpha=16, init_lora_weights="zeros")
again.lora_A()[...] = saved["A"]
again.lora_B()[...] = saved["B"]
x = rng.standard_normal((4, IN)).astype(np.float32)
assert np.array_equal(again.eval().forward(x), layer.eval().forward(x))
print("reloaded adapter reproduces the trained layer exactly")
