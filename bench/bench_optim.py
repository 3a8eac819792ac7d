"""AdamW over >= 1 GiB of optimizer state: peftswift unpaged, peftswift paged with a budget of a
quarter of the state, torch.optim.AdamW, and bitsandbytes' PagedAdamW32bit (which falls back
to unpaged on CPU), each in its own process so that its peak RSS is its own.

    .bench-venv/bin/python bench/bench_optim.py [--params-millions 134] [--steps 3]
        (after scripts/bench-venv.sh (once): a venv with the newest peers and this checkout's binding)

Prints step time, peak RSS above the parameters and gradients, the pager's statistics, and
whether paged and unpaged runs end with identical parameters. Targets (issue 5): paged peak
RSS <= budget + 64 MiB over params + grads; identical results; paged step within 2x unpaged;
unpaged step at least as fast as torch.optim.AdamW. The output starts with the host's CPU, flags
and load and the peers' versions (bench/_host.py); the child processes run in the same
interpreter (sys.executable), so they measure those versions."""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _host import print_header

CHUNK = 1 << 23  # 8 Mi floats per tensor


def vm_hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def make(n):
    sizes = [CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else [])
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(s, dtype=np.float32) for s in sizes]
    gs = [(rng.standard_normal(s, dtype=np.float32) * 0.01) for s in sizes]
    return ps, gs


def child(mode, n, steps, tmp):
    import torch

    torch.set_num_threads(2)
    ps, gs = make(n)
    base = vm_hwm_bytes()
    stats = None
    if mode.startswith("peftswift"):
        import peftswift

        peftswift.set_num_threads(2)
        pager = None
        if mode == "peftswift-paged":
            pager = peftswift.Pager(n * 8 // 4, 4 << 20, tmp)
        opt = peftswift.AdamW(list(zip(ps, gs)), lr=1e-3, pager=pager)
        step = opt.step
    else:
        tps = [torch.nn.Parameter(torch.from_numpy(p)) for p in ps]
        for t, g in zip(tps, gs):
            t.grad = torch.from_numpy(g)
        if mode == "torch":
            opt = torch.optim.AdamW(tps, lr=1e-3)
        else:
            import warnings

            warnings.filterwarnings("ignore")
            import bitsandbytes as bnb

            opt = bnb.optim.PagedAdamW32bit(tps, lr=1e-3)
        step = opt.step
    times = []
    for _ in range(steps + 1):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    if mode == "peftswift-paged":
        stats = pager.stats()
    h = hashlib.sha256()
    for p in ps:
        h.update(p.tobytes())
    print(json.dumps({"mode": mode, "step_s": sorted(times[1:])[len(times[1:]) // 2], "first_s": times[0],
                      "peak": vm_hwm_bytes(), "base": base, "stats": stats, "hash": h.hexdigest()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params-millions", type=float, default=134.3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child")
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    a = ap.parse_args()
    n = int(a.params_millions * 1e6)
    if a.child:
        child(a.child, n, a.steps, a.tmp)
        return
    print_header(["torch", "bitsandbytes"])
    state = n * 8
    print(f"{n / 1e6:.1f} M parameters: params + grads {n * 8 / 2**30:.2f} GiB, AdamW state {state / 2**30:.2f} GiB, "
          f"paged budget {state / 4 / 2**20:.0f} MiB")
    res = {}
    for mode in ["peftswift", "peftswift-paged", "torch", "bnb-paged"]:
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--params-millions", str(a.params_millions),
                              "--steps", str(a.steps), "--tmp", a.tmp], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{mode}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res[mode] = r
        over = (r["peak"] - r["base"]) / 2**20
        print(f"{mode:<16} step {r['step_s'] * 1e3:9.1f} ms   peak RSS {r['peak'] / 2**30:6.2f} GiB "
              f"({over:8.1f} MiB above params + grads)")
        if r["stats"]:
            s = r["stats"]
            print(f"{'':<16} pager: {s['pages_spilled']} pages / {s['bytes_spilled'] / 2**20:.0f} MiB spilled, "
                  f"{s['pages_read_back']} pages / {s['bytes_read_back'] / 2**20:.0f} MiB read back, "
                  f"I/O {s['io_seconds']:.2f} s, peak resident {s['peak_resident_bytes'] / 2**20:.0f} MiB")
    if "peftswift" in res and "peftswift-paged" in res:
        u, p = res["peftswift"], res["peftswift-paged"]
        budget = state / 4
        over = p["peak"] - p["base"]
        print(f"\npaged == unpaged parameters: {u['hash'] == p['hash']}")
        print(f"paged peak RSS above params + grads: {over / 2**20:.0f} MiB (target <= budget {budget / 2**20:.0f} + 64 MiB): "
              f"{'ok' if over <= budget + (64 << 20) else 'SHORT'}")
        print(f"paged step / unpaged step: {p['step_s'] / u['step_s']:.2f}x (target <= 2x): "
              f"{'ok' if p['step_s'] <= 2 * u['step_s'] else 'SHORT'}")
    if "peftswift" in res and "torch" in res:
        r = res["torch"]["step_s"] / res["peftswift"]["step_s"]
        print(f"unpaged step vs torch.optim.AdamW: {r:.2f}x faster (target >= 1x): {'ok' if r >= 1 else 'SHORT'}")
    if "bnb-paged" in res and "peftswift-paged" in res:
        print(f"paged step vs bitsandbytes PagedAdamW32bit (unpaged on CPU): "
              f"{res['bnb-paged']['step_s'] / res['peftswift-paged']['step_s']:.2f}x")


if __name__ == "__main__":
    main()
