"""examples/quantize.py: NF4 + double quantization of a weight with peftswift, read back, and
(when bitsandbytes is installed) the same bytes as bitsandbytes.

    python3 -m pip install ./bindings/python && python3 examples/quantize.py
"""
import numpy as np

import peftswift

rng = np.random.default_rng(0)
w = (rng.standard_normal((1024, 1024)) * 0.02).astype(np.float32)

packed, state = peftswift.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
back = peftswift.dequantize_4bit(packed, state)
bits = 8 * (packed.nbytes + state.absmax.nbytes + state.state2.absmax.nbytes + 4) / w.size
print(f"peftswift {peftswift.__version__}: {w.shape} -> {packed.nbytes} bytes of codes, {bits:.3f} bits/parameter")
print(f"round trip max |error| {np.abs(back - w).max():.5f}, rms {np.sqrt(np.mean((back - w) ** 2)):.6f}")

sd = state.as_dict(packed=True)
print("state dict keys:", sorted(sd))
again = peftswift.QuantState.from_dict(sd)
assert np.array_equal(peftswift.dequantize_4bit(packed, again), back)

try:
    import torch
    import bitsandbytes.functional as F

    p2, s2 = F.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4", compress_statistics=True)
    print("bitsandbytes packs the same codes:", np.array_equal(p2.numpy(), packed))
except ImportError:
    print("(bitsandbytes not installed: skipping the side-by-side check)")

try:
    peftswift.quantize_4bit(np.array([1.0, np.nan], dtype=np.float32))
except peftswift.NonFiniteError as e:
    print(f"NaN rejected (status {e.status}): {e}")
