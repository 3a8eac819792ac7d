"""torch / bitsandbytes side of the optimizer benchmark (the Swift side is
Tests/PeftSwiftTests/OptimBenchTests.swift, run with PST_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter OptimBench).

Same tensors: 4 parameters of 2^21 float32 elements (8.4 M in all), median of 20 steps after 3 warm-up steps.
Usage: .bench-venv/bin/python bench/optim_bench.py [threads]
    (after scripts/bench-venv.sh (once): a venv with the newest peers and this checkout's binding)
The output starts with the host's CPU, flags and load and the peers' versions (bench/_host.py).
"""
import statistics
import sys
import time
import warnings

import torch

from _host import print_header

warnings.filterwarnings("ignore")
if len(sys.argv) > 1:
    torch.set_num_threads(int(sys.argv[1]))
print_header(["torch", "bitsandbytes"])
SIZES = [1 << 21] * 4


def bench(make, label):
    ps = [torch.randn(n).requires_grad_(True) for n in SIZES]
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-2
    opt = make(ps)
    for _ in range(3):
        opt.step()
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        opt.step()
        ts.append(time.perf_counter() - t0)
    print(f"{label:40s} median {statistics.median(ts) * 1e3:8.2f} ms/step  ({sum(SIZES) / 1e6:.1f} M params, {torch.get_num_threads()} threads)")


bench(lambda ps: torch.optim.AdamW(ps, foreach=True), "torch.optim.AdamW foreach=True")
bench(lambda ps: torch.optim.AdamW(ps, foreach=False), "torch.optim.AdamW foreach=False")
try:
    import bitsandbytes as bnb
    bench(lambda ps: bnb.optim.AdamW8bit(ps), "bitsandbytes AdamW8bit (CPU)")
except ImportError:
    pass
