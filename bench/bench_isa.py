"""The SmolLM2 QLoRA step on each kernel path and compute dtype this CPU offers, alternating, in
fresh processes: wall time and process CPU time (user + system) per step, and the loss (fp32 runs
must print the same losses on every path: the kernels are bit-identical).

    .bench-venv/bin/python bench/bench_isa.py [--steps 3] [--rounds 2] [--threads 2]

Configurations: PST_ISA=avx2, avx512 (fp32) and avx512bf16 with compute_dtype fp32 and bf16, as far
as the CPU has them. The same step as bench_llm.py (nf4 + double quant, LoRA r 16 on the 7
projections, dropout 0.05, batch 4 x 256, AdamW). Process CPU time is the figure to read on a
shared machine: wall time grows with the other processes' load, CPU time much less (the engine's
threads do not spin while waiting)."""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _host
import bench_llm as B


def side(a):
    import peftswift
    from peftswift import llm

    peftswift.set_num_threads(a.threads)
    model = llm.Model.load(B.gguf_path(), quantize=True, compute_dtype=a.dtype)
    data = B.corpus_file(max(20000, (a.steps + 1) * 4 * 256 * 2))
    tr = llm.Trainer(model, [data], seq_len=256, format="text", steps=a.steps + 1, batch_size=4, gradient_accumulation=1,
                     learning_rate=2e-4, warmup_steps=0, schedule="constant", weight_decay=0.0, clip_norm=1.0,
                     optimizer_8bit=False, r=16, lora_alpha=32, lora_dropout=0.05, seed=42)
    out = {"isa": peftswift.get_isa(), "dtype": a.dtype, "wall": [], "cpu": [], "loss": []}
    for i in range(a.steps + 1):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        d = tr.step()
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if i > 0:
            out["wall"].append(t1 - t0)
            out["cpu"].append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
        out["loss"].append(float(d["loss"]))
    os.unlink(data)
    out["loadavg"] = os.getloadavg()[0]
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        return side(a)
    import peftswift

    _host.print_header(["torch"])
    paths = ["avx2", "avx512", "avx512bf16"]
    host = peftswift.host_isa()
    configs = [(p, "fp32") for p in paths[: paths.index(host) + 1]]
    if host == "avx512bf16":
        configs.append(("avx512bf16", "bf16"))
    res = {c: [] for c in configs}
    for _ in range(a.rounds):
        for isa, dtype in configs:
            env = dict(os.environ, PST_ISA=isa)
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--side", "--dtype", dtype, "--steps", str(a.steps),
                                "--threads", str(a.threads)], env=env, capture_output=True, text=True)
            lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
            if not lines:
                sys.stderr.write(r.stdout[-2000:] + r.stderr[-2000:])
                continue
            res[(isa, dtype)].append(json.loads(lines[-1]))
    print(f"\nSmolLM2-135M QLoRA step (nf4+DQ, r 16 x 7 projections, batch 4 x 256), {a.threads} threads, "
          f"{a.rounds} alternating run(s) of 1 warm-up + {a.steps} steps per configuration")
    print(f"{'PST_ISA':<12} {'compute':<8} {'wall s (min)':>12} {'cpu s (min)':>12} {'cpu s (mean)':>12}  losses of the first run  load")
    base = None
    for (isa, dtype), rs in res.items():
        if not rs:
            print(f"{isa:<12} {dtype:<8} failed")
            continue
        wall = min(w for r in rs for w in r["wall"])
        cpus = [c for r in rs for c in r["cpu"]]
        cpu = min(cpus)
        base = base or cpu
        losses = " ".join("%.4f" % x for x in rs[0]["loss"])
        loads = " ".join("%.1f" % r["loadavg"] for r in rs)
        print(f"{isa:<12} {dtype:<8} {wall:>12.3f} {cpu:>12.3f} {sum(cpus) / len(cpus):>12.3f}  "
              f"{losses}  {loads}   cpu vs avx2: {base / cpu:.2f}x")


if __name__ == "__main__":
    main()
