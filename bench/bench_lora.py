"""LoRA / QLoRA layer and SGEMM: peftswift vs PyTorch, bitsandbytes and PEFT (CPU), one run.

    .bench-venv/bin/python bench/bench_lora.py [--reps 5] [--threads 2]
        (after scripts/bench-venv.sh (once): a venv with the newest peers and this checkout's binding)

in = out = 4096, r = 16, float32 activations, 2 threads. Targets (issue 4):
  SGEMM 512x4096x4096 >= PyTorch F.linear;
  QLoRA forward M=1 (nf4 + double quant) >= 15x bitsandbytes and faster than dense F.linear M=1;
  QLoRA forward+backward M=512 >= 1.3x PEFT over bitsandbytes, and within 1.15x of peftswift's
  own dense-base LoRA on the same shape.
Each figure is the best of several runs (the machine is shared). The output starts with the host's
CPU, flags and load and the peers' versions (bench/_host.py)."""
import argparse
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import peft  # noqa: E402

import peftswift  # noqa: E402
from _host import print_header  # noqa: E402


def best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return min(ts)


class One(torch.nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.proj = lin

    def forward(self, x):
        return self.proj(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print_header(["torch", "bitsandbytes", "peft"])
    torch.set_num_threads(a.threads)
    peftswift.set_num_threads(a.threads)
    D, R, M = 4096, 16, 512
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((D, D)) * 0.02).astype(np.float32)
    x512 = rng.standard_normal((M, D)).astype(np.float32)
    x1 = x512[:1].copy()
    dy = rng.standard_normal((M, D)).astype(np.float32)
    rows = []

    # --- SGEMM: y = x W^T, 512 x 4096 x 4096
    wt = torch.from_numpy(w)
    xt = torch.from_numpy(x512)
    t_torch = best(lambda: torch.nn.functional.linear(xt, wt), a.reps)
    dense = peftswift.LoraLinear(w)
    t_ps = best(lambda: dense.forward(x512), a.reps)
    rows.append(("SGEMM 512x4096x4096 (x W^T)", t_ps, "torch F.linear", t_torch, 1.0))
    gf = 2 * M * D * D / 1e9
    print(f"SGEMM: peftswift {gf / t_ps:.0f} GFLOP/s, torch {gf / t_torch:.0f} GFLOP/s")

    # --- QLoRA layer (nf4 + double quant), r = 16
    lin = torch.nn.Linear(D, D, bias=False)
    with torch.no_grad():
        lin.weight.copy_(wt)
    q4 = bnb.nn.Linear4bit(D, D, bias=False, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    q4.weight = bnb.nn.Params4bit(wt.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    q4 = q4.to("cpu")
    sd = q4.state_dict()
    st = peftswift.QuantState.from_dict({k[len("weight."):]: v for k, v in sd.items() if k.startswith("weight.")})
    ql = peftswift.LoraLinear.quantized(sd["weight"].numpy(), st)
    ql.add_adapter("default", r=R, lora_alpha=32)
    ql.lora_B()[...] = (rng.standard_normal((D, R)) * 0.01).astype(np.float32)
    dl = peftswift.LoraLinear(w)
    dl.add_adapter("default", r=R, lora_alpha=32)
    dl.lora_B()[...] = ql.lora_B()

    x1t = torch.from_numpy(x1)
    with torch.no_grad():
        t_bnb1 = best(lambda: q4(x1t), a.reps)
        t_lin1 = best(lambda: torch.nn.functional.linear(x1t, wt), a.reps * 4)
    t_q1 = best(lambda: ql.forward(x1), a.reps * 4)
    rows.append(("QLoRA forward M=1 vs bitsandbytes Linear4bit", t_q1, "bnb Linear4bit", t_bnb1, 15.0))
    rows.append(("QLoRA forward M=1 vs dense F.linear", t_q1, "torch F.linear M=1", t_lin1, 1.0))

    # PEFT over bitsandbytes, forward + backward, M = 512
    model = One(q4)
    model.is_loaded_in_4bit = True
    pm = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=32, target_modules=["proj"], lora_dropout=0.0))
    xg = torch.from_numpy(x512)
    dyt = torch.from_numpy(dy)

    def peft_step():
        xx = xg.clone().requires_grad_(True)
        y = pm(xx)
        y.backward(dyt)

    def ps_step(layer):
        layer.forward(x512)
        layer.backward(dy)

    t_peft = best(peft_step, max(2, a.reps // 2))
    t_q512 = best(lambda: ps_step(ql), a.reps)
    t_d512 = best(lambda: ps_step(dl), a.reps)
    rows.append(("QLoRA fwd+bwd M=512 vs PEFT over bitsandbytes", t_q512, "PEFT+bnb", t_peft, 1.3))
    rows.append(("QLoRA fwd+bwd M=512 vs peftswift dense-base LoRA", t_q512, "peftswift dense LoRA", t_d512, 1 / 1.15))

    print(f"\n{'measure':<52} {'peftswift ms':>12} {'peer':<22} {'peer ms':>9} {'speed-up':>9} {'target':>8}")
    for name, ours, peer, theirs, target in rows:
        ratio = theirs / ours
        ok = "ok" if ratio >= target else "SHORT"
        print(f"{name:<52} {ours * 1e3:12.2f} {peer:<22} {theirs * 1e3:9.2f} {ratio:8.2f}x {'>=' + format(target, '.2f') + 'x':>8} {ok}")


if __name__ == "__main__":
    main()
