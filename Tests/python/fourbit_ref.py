"""The arbiter for 4-bit data: a plain numpy decode of bitsandbytes' documented format, which
does not depend on the host, on bitsandbytes' kernels or on peftswift.

Format (bitsandbytes/functional.py quantize_4bit / dequantize_4bit and ../shared/FORMATS.md):
flat row-major blocks of `blocksize` elements that ignore row boundaries; two codes per byte,
element 2j in the HIGH nibble; value = code_table[nibble] * absmax[i // blocksize] in float32.
Double quantization: absmax = code8[q] * nested_absmax[b // nested_blocksize] + offset, each
step rounded to float32 (bitsandbytes' dequantize_blockwise, then `absmax += offset`).

Also: when bitsandbytes' own CPU dequantization is known to be wrong (FORMATS.md section 8)."""
import numpy as np
import torch


def _f32(a):
    return np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a).astype(np.float32, copy=False)


def absmax_of(state):
    """float32 absmax per block from a bitsandbytes QuantState or a peftswift QuantState."""
    nested = getattr(state, "nested", None)
    if nested is None:
        nested = getattr(state, "state2", None) is not None
    if not nested:
        return _f32(state.absmax)
    s2 = state.state2
    q = np.asarray(state.absmax.numpy() if isinstance(state.absmax, torch.Tensor) else state.absmax).astype(np.int64)
    code8, absmax2 = _f32(s2.code), _f32(s2.absmax)
    offset = np.float32(state.offset.item() if isinstance(state.offset, torch.Tensor) else state.offset)
    bs2 = int(s2.blocksize)
    return (code8[q] * absmax2[np.arange(q.size) // bs2]).astype(np.float32) + offset


def decode_4bit(packed, state):
    """float32 array of state.shape: the exact values the format defines."""
    p = np.asarray(packed.numpy() if isinstance(packed, torch.Tensor) else packed).reshape(-1).view(np.uint8)
    shape = tuple(int(d) for d in state.shape)
    n = int(np.prod(shape))
    nib = np.empty(p.size * 2, dtype=np.uint8)
    nib[0::2] = p >> 4
    nib[1::2] = p & 0xF
    code = _f32(state.code)
    absmax = absmax_of(state)
    bs = int(state.blocksize)
    y = code[nib[:n]] * absmax[np.arange(n) // bs]
    return y.astype(np.float32).reshape(shape)


def host_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bnb_dequantize_may_be_wrong(shape, blocksize):
    """Where bitsandbytes 0.50.2's CPU dequantize_4bit has been seen to be wrong
    (../shared/FORMATS.md section 8): its native kernel's AVX-512 path (chosen by the CPU's own
    flags, so ATEN_CPU_CAPABILITY does not turn it off) on rows whose length is not a multiple
    of the blocksize. A 1-D tensor is one row (n elements), so it is affected only in its tail."""
    shape = tuple(int(d) for d in shape)
    return "avx512f" in host_flags() and len(shape) >= 2 and shape[-1] % int(blocksize) != 0


def check_bnb_dequantize(bnb_values, arbiter, shape, blocksize, what):
    """bitsandbytes' dequantized values against the format's: equal, or wrong only where its
    known AVX-512 defect applies (then the test says so and goes on with the arbiter).
    Returns True when bitsandbytes was right."""
    b = np.asarray(bnb_values, dtype=np.float32).reshape(-1)
    a = np.asarray(arbiter, dtype=np.float32).reshape(-1)
    if np.array_equal(b, a):
        return True
    bad = np.flatnonzero(b != a)
    msg = (f"{what}: bitsandbytes' dequantize_4bit differs from the format at {bad.size} of {a.size} "
           f"values (max |d| {np.abs(b - a).max():.3g}; shape {tuple(shape)}, blocksize {blocksize})")
    assert bnb_dequantize_may_be_wrong(shape, blocksize), msg + ": outside its known AVX-512 defect"
    print(f"PEER WRONG (known, FORMATS.md section 8): {msg}; peftswift is compared with the numpy decode")
    return False
