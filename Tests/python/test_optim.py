"""Pager and AdamW through the Python package, live against torch.optim.AdamW and
bitsandbytes' AdamW8bit (the Swift tests also hold the state bytes against fixtures)."""
import warnings

import numpy as np
import pytest
import torch

import peftswift

warnings.filterwarnings("ignore")


def grads_for(step, shape, seed):
    r = np.random.default_rng(seed * 1000 + step)
    return (r.standard_normal(shape) * 0.1).astype(np.float32)


def run_torch(opt_cls, p0, steps, **kw):
    t = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = opt_cls([t], **kw)
    for s in range(steps):
        t.grad = torch.from_numpy(grads_for(s, p0.shape, 1))
        opt.step()
    return t.detach().numpy()


def run_ours(p0, steps, pager=None, **kw):
    p = p0.copy()
    g = np.zeros_like(p)
    opt = peftswift.AdamW([(p, g)], pager=pager, **kw)
    for s in range(steps):
        g[...] = grads_for(s, p0.shape, 1)
        opt.step()
    return p, opt


def test_adamw_matches_torch_after_100_steps(rng):
    p0 = rng.standard_normal(5000).astype(np.float32)
    ref = run_torch(torch.optim.AdamW, p0, 100, lr=1e-3, weight_decay=0.01)
    ours, _ = run_ours(p0, 100, lr=1e-3, weight_decay=0.01)
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-6


def test_adamw8bit_matches_bitsandbytes(rng):
    import bitsandbytes as bnb

    p0 = rng.standard_normal(3 * 4096 + 100).astype(np.float32)
    ref = run_torch(bnb.optim.AdamW8bit, p0, 100, lr=1e-3, weight_decay=0.01)
    ours, _ = run_ours(p0, 100, lr=1e-3, weight_decay=0.01, optim_bits=8)
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-5


@pytest.mark.parametrize("bits", [32, 8])
def test_paged_equals_unpaged_with_spilling(rng, bits, tmp_path):
    shapes = [(1 << 20,), (700_000,), (300_000,)]
    params0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    state_bytes = sum(p.size for p in params0) * (8 if bits == 32 else 2)
    results = []
    for paged in [False, True]:
        pager = peftswift.Pager(state_bytes // 4, 64 << 10, str(tmp_path)) if paged else None
        ps = [p.copy() for p in params0]
        gs = [np.zeros_like(p) for p in params0]
        opt = peftswift.AdamW(list(zip(ps, gs)), lr=1e-2, optim_bits=bits, pager=pager)
        for s in range(5):
            for i, g in enumerate(gs):
                g[...] = grads_for(s, g.shape, i)
            opt.step()
        results.append((ps, opt.state_dict(), pager.stats() if pager else None))
    (p_un, st_un, _), (p_pg, st_pg, stats) = results
    for a, b in zip(p_un, p_pg):
        np.testing.assert_array_equal(a, b)
    assert st_un == st_pg
    assert stats["pages_spilled"] > 0 and stats["pages_read_back"] > 0
    assert stats["peak_resident_bytes"] <= stats["budget_bytes"]


def test_resume_is_exact(rng):
    p0 = rng.standard_normal(9000).astype(np.float32)
    straight, _ = run_ours(p0, 20, lr=1e-2, optim_bits=8)
    p = p0.copy()
    g = np.zeros_like(p)
    opt = peftswift.AdamW([(p, g)], lr=1e-2, optim_bits=8)
    for s in range(10):
        g[...] = grads_for(s, p.shape, 1)
        opt.step()
    saved, p_saved = opt.state_dict(), p.copy()
    p2 = p_saved.copy()
    g2 = np.zeros_like(p2)
    opt2 = peftswift.AdamW([(p2, g2)], lr=1e-2, optim_bits=8)
    opt2.load_state_dict(saved)
    for s in range(10, 20):
        g2[...] = grads_for(s, p2.shape, 1)
        opt2.step()
    np.testing.assert_array_equal(p2, straight)
    bad = bytearray(saved)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(peftswift.CorruptDataError):
        opt2.load_state_dict(bytes(bad))


def test_clip_and_schedules():
    from transformers import get_cosine_schedule_with_warmup

    p = np.zeros(10, np.float32)
    g = np.full(10, 3.0, np.float32)
    opt = peftswift.AdamW([(p, g)])
    norm = opt.clip_grad_norm(1.0)
    assert abs(norm - np.sqrt(90)) < 1e-4
    assert abs(np.linalg.norm(g) - 1.0) < 1e-5
    t = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([t], lr=1.0)
    sch = get_cosine_schedule_with_warmup(o, 10, 100)
    for s in range(100):
        assert abs(peftswift.lr_multiplier("cosine", s, 10, 100) - sch.get_last_lr()[0]) < 1e-12
        o.step()
        sch.step()


def test_pager_errors(tmp_path):
    with pytest.raises(peftswift.InvalidArgumentError):
        peftswift.Pager(0)
    with pytest.raises(peftswift.InvalidArgumentError):
        peftswift.Pager(1 << 20, 1000)  # not a multiple of the system page
    pager = peftswift.Pager(8 << 20, 1 << 20, str(tmp_path))
    buf = pager.alloc(4 << 20)
    with pytest.raises(peftswift.MisuseError):
        buf.release(0, 4096)
    with pytest.raises(peftswift.Error):
        pager.alloc(64 << 20).acquire()  # larger than the whole budget


def test_lora_layer_trains_with_paged_adamw(rng, tmp_path):
    w = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)
    packed, state = peftswift.quantize_4bit(w, compress_statistics=True)
    layer = peftswift.LoraLinear.quantized(packed, state)
    layer.add_adapter("default", r=4, lora_alpha=8)
    target = layer.base_weight() + (rng.standard_normal((64, 2)) @ rng.standard_normal((2, 128)) * 0.05).astype(np.float32)
    pager = peftswift.Pager(16 << 20, 1 << 20, str(tmp_path))
    opt = peftswift.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.0, pager=pager)
    losses = []
    for _ in range(60):
        x = rng.standard_normal((32, 128)).astype(np.float32)
        err = layer.forward(x) - x @ target.T
        losses.append(float((err ** 2).mean()))
        opt.zero_grad()
        layer.backward(2 * err / err.size, need_dx=False)
        opt.step()
    assert losses[-1] < 0.2 * losses[0]
