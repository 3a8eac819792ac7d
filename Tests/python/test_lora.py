"""peftswift's LoRA / QLoRA layer against PEFT on PyTorch (and bitsandbytes' Linear4bit) with
identical weights and inputs: y, dx, dA, dB (and the bias gradient)."""
import warnings

import numpy as np
import pytest
import torch

import peftswift

warnings.filterwarnings("ignore")
peft = pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")


class One(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.proj = lin

    def forward(self, x):
        return self.proj(x)


def peft_model(base, adapters, quantized=False):
    """adapters: [(name, r, alpha, rslora)] -> PEFT model with those adapters, all active."""
    model = One(base)
    if quantized:
        model.is_loaded_in_4bit = True
    name, r, alpha, rs = adapters[0]
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0, use_rslora=rs)
    pm = peft.get_peft_model(model, cfg, adapter_name=name)
    for name, r, alpha, rs in adapters[1:]:
        pm.add_adapter(name, peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0, use_rslora=rs))
    pm.base_model.set_adapter([a[0] for a in adapters])
    return pm


def copy_weights(pm, layer, adapters, rng):
    lin = pm.base_model.model.proj
    for name, r, alpha, rs in adapters:
        A = (rng.standard_normal((r, layer.in_features)) * 0.1).astype(np.float32)
        B = (rng.standard_normal((layer.out_features, r)) * 0.1).astype(np.float32)
        with torch.no_grad():
            lin.lora_A[name].weight.copy_(torch.from_numpy(A))
            lin.lora_B[name].weight.copy_(torch.from_numpy(B))
        layer.lora_A(name)[...] = A
        layer.lora_B(name)[...] = B


def run_both(pm, layer, x, u):
    xt = torch.from_numpy(x).requires_grad_(True)
    y = pm(xt)
    (y * torch.from_numpy(u)).sum().backward()
    layer.zero_grad()
    ys = layer.forward(x)
    dx = layer.backward(u)
    return y.detach().numpy(), xt.grad.numpy(), ys, dx


def close(a, b, rtol):
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max()) / scale
    assert err <= rtol, f"max relative error {err:.3g} > {rtol}"


ADAPTER_SETS = [
    [("default", 8, 16, False)],
    [("default", 8, 16, True)],                                  # rsLoRA
    [("default", 4, 8, False), ("second", 16, 32, True)],        # several adapters at once
]


@pytest.mark.parametrize("adapters", ADAPTER_SETS)
@pytest.mark.parametrize("bias", [False, True])
def test_dense_base_matches_peft(rng, adapters, bias):
    inF, outF, m = 96, 80, 24
    lin = torch.nn.Linear(inF, outF, bias=bias)
    w = lin.weight.detach().numpy().copy()
    b = lin.bias.detach().numpy().copy() if bias else None
    layer = peftswift.LoraLinear(w, b)
    for name, r, alpha, rs in adapters:
        layer.add_adapter(name, r=r, lora_alpha=alpha, use_rslora=rs)
    layer.set_adapter([a[0] for a in adapters])
    pm = peft_model(lin, adapters)
    copy_weights(pm, layer, adapters, rng)
    x = rng.standard_normal((m, inF)).astype(np.float32)
    u = rng.standard_normal((m, outF)).astype(np.float32)
    y, dx, ys, dxs = run_both(pm, layer, x, u)
    close(ys, y, 1e-5)
    close(dxs, dx, 1e-5)
    plin = pm.base_model.model.proj
    for name, *_ in adapters:
        close(layer.grad_A(name), plin.lora_A[name].weight.grad.numpy(), 1e-5)
        close(layer.grad_B(name), plin.lora_B[name].weight.grad.numpy(), 1e-5)
        info = layer.adapter_info(name)
        assert abs(info["scaling"] - plin.scaling[name]) < 1e-6


@pytest.mark.parametrize("adapters", ADAPTER_SETS[:2] + ADAPTER_SETS[2:])
def test_qlora_base_matches_peft_on_bitsandbytes(rng, adapters):
    inF, outF, m = 128, 64, 16
    lin = torch.nn.Linear(inF, outF, bias=False)
    q = bnb.nn.Linear4bit(inF, outF, bias=False, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    q = q.to("cpu")
    sd = q.state_dict()
    state = peftswift.QuantState.from_dict({k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")})
    layer = peftswift.LoraLinear.quantized(sd["weight"].numpy(), state)
    for name, r, alpha, rs in adapters:
        layer.add_adapter(name, r=r, lora_alpha=alpha, use_rslora=rs)
    layer.set_adapter([a[0] for a in adapters])
    pm = peft_model(q, adapters, quantized=True)
    copy_weights(pm, layer, adapters, rng)
    x = rng.standard_normal((m, inF)).astype(np.float32)
    u = rng.standard_normal((m, outF)).astype(np.float32)
    y, dx, ys, dxs = run_both(pm, layer, x, u)
    # the same dequantized weight: agreement within fp32 rounding of the products
    close(ys, y, 1e-5)
    close(dxs, dx, 1e-5)
    plin = pm.base_model.model.proj
    for name, *_ in adapters:
        close(layer.grad_A(name), plin.lora_A[name].weight.grad.numpy(), 1e-5)
        close(layer.grad_B(name), plin.lora_B[name].weight.grad.numpy(), 1e-5)
    # M = 1 (its own path, reading the packed codes)
    x1 = x[:1]
    close(layer.forward(x1), pm(torch.from_numpy(x1)).detach().numpy(), 1e-5)


def test_merge_matches_peft_merge_and_unmerge_restores(rng):
    inF, outF = 128, 64
    lin = torch.nn.Linear(inF, outF, bias=False)
    w = lin.weight.detach().numpy().copy()
    packed, state = peftswift.quantize_4bit(w, compress_statistics=True)
    layer = peftswift.LoraLinear.quantized(packed, state)
    layer.add_adapter("default", r=8, lora_alpha=16)
    layer.lora_B()[...] = (rng.standard_normal((outF, 8)) * 0.05).astype(np.float32)
    x = rng.standard_normal((4, inF)).astype(np.float32)
    y_before = layer.forward(x)
    w_deq = layer.base_weight()
    report = layer.merge()
    assert 0 < report["rms"] <= report["max_abs"]
    # merged weight = quantize(dequant(W) + s * B @ A), as PEFT/bitsandbytes merge
    delta = (layer.lora_B() @ layer.lora_A()) * 2.0
    p2, s2 = peftswift.quantize_4bit(w_deq + delta, compress_statistics=True)
    close(layer.base_weight(), peftswift.dequantize_4bit(p2, s2), 1e-6)
    # merged adapters no longer contribute separately: forward is x @ merged_W.T
    close(layer.forward(x), x @ layer.base_weight().T, 1e-5)
    layer.unmerge()
    np.testing.assert_array_equal(layer.base_weight(), w_deq)
    np.testing.assert_array_equal(layer.forward(x), y_before)


def test_adapter_management_and_errors(rng):
    layer = peftswift.LoraLinear(np.eye(16, dtype=np.float32))
    layer.add_adapter("a", r=4, lora_alpha=8)
    layer.add_adapter("b", r=2, lora_alpha=2)
    with pytest.raises(peftswift.ExistsError):
        layer.add_adapter("a")
    with pytest.raises(peftswift.NotFoundError):
        layer.set_adapter("zzz")
    with pytest.raises(peftswift.InvalidArgumentError, match="r \\(0\\)"):
        layer.add_adapter("c", r=0)
    with pytest.raises(peftswift.InvalidArgumentError, match="r \\(17\\)"):
        layer.add_adapter("c", r=17)
    with pytest.raises(peftswift.InvalidArgumentError, match="lora_alpha"):
        layer.add_adapter("c", lora_alpha=0)
    with pytest.raises(peftswift.InvalidArgumentError, match="lora_dropout"):
        layer.add_adapter("c", lora_dropout=1.0)
    with pytest.raises(peftswift.MisuseError, match="backward before forward"):
        layer.backward(np.ones((1, 16), dtype=np.float32))
    with pytest.raises(ValueError):
        layer.forward(np.ones((2, 15), dtype=np.float32))
    A = layer.lora_A("a")
    layer.delete_adapter("a")
    A[...] = 1.0  # a view of a deleted adapter stays valid memory (kept until the layer goes)
    assert layer.adapter_info("b")["active"] is False
    layer.set_adapter(["b"], weights=[0.5])
    assert layer.adapter_info("b")["weight"] == 0.5
