"""peftswift.llm on a tiny random Llama (Tests/fixtures/llm/tiny_llama.gguf, made by
Tests/fixtures/make_tiny_llama.py with gguf-py) against transformers and PEFT, live: the GGUF
and Hugging Face checkpoint-directory loaders (fp32 and bf16 safetensors, tokenizer.json), and
PEFT-made adapters loaded by peftswift. Fast; the SmolLM2 comparisons are in test_llm.py."""
import json
import pathlib

import numpy as np
import pytest
import torch

from peftswift import llm
import peftswift

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "llm"
GGUF = FIX / "tiny_llama.gguf"
TEXTS = ["the cat in the hat<|im_end|> sat", "  two  spaces\tand a tab\n\nnew lines", "caf\u00e9 \u4e2d\u6587 \U0001F600 123 4567",
         "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "def f(x):\n    return x**2  # code"]


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tm = AutoModelForCausalLM.from_pretrained(str(FIX), gguf_file=GGUF.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(FIX), gguf_file=GGUF.name)
    return tm, tok


@pytest.fixture(scope="module")
def hf_dirs(hf, tmp_path_factory):
    """The same model saved by transformers as checkpoint directories, fp32 and bf16."""
    from transformers import LlamaForCausalLM
    tm, tok = hf
    cfg = tm.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        d = tmp_path_factory.mktemp(f"hf_{str(dtype).split('.')[-1]}")
        sd = {k: v.to(dtype) for k, v in tm.state_dict().items()}
        fresh = LlamaForCausalLM(cfg).to(dtype)
        fresh.load_state_dict(sd)
        fresh.save_pretrained(d)
        tok.save_pretrained(d)
        ref = LlamaForCausalLM(cfg)     # fp32 compute over the weights as stored (rotary buffers stay fp32)
        ref.load_state_dict({k: v.float() for k, v in sd.items()})
        out[dtype] = (d, ref.eval())
    return out


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def hf_logits(tm, ids):
    with torch.no_grad():
        return tm(torch.tensor(ids)).logits.numpy()


def test_gguf_logits_and_tokens_match_transformers(hf, rng):
    tm, tok = hf
    m = llm.Model.load(GGUF, quantize=False, pretokenizer="gpt2")
    for t in TEXTS:
        assert m.tokenize(t) == tok(t)["input_ids"], t
        assert m.detokenize(m.tokenize(t)) == t
    ids = rng.integers(0, m.info["vocab"], size=(2, 40))
    assert rel(m.logits(ids), hf_logits(tm, ids)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_hugging_face_directory_loads(hf, hf_dirs, dtype, rng):
    _, tok = hf
    d, ref = hf_dirs[dtype]
    m = llm.Model.load(d, quantize=False)
    info = m.info
    assert info["has_tokenizer"] and info["layers"] == 1 and info["vocab"] == 264 and info["tied_embeddings"]
    for t in TEXTS:
        assert m.tokenize(t) == tok(t)["input_ids"], t
    ids = rng.integers(0, 264, size=(2, 33))
    assert rel(m.logits(ids), hf_logits(ref, ids)) < 1e-5
    q = llm.Model.load(d)      # NF4 + double quant
    assert q.info["quantized"] and q.info["base_bytes"] < info["base_bytes"]
    assert rel(q.logits(ids), hf_logits(ref, ids)) < 0.5   # 4-bit base: close, not equal


def test_hugging_face_directory_errors(hf_dirs, tmp_path):
    d, _ = hf_dirs[torch.float32]
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mistral"
    cfg["architectures"] = ["MistralForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(peftswift.UnsupportedError, match="mistral"):
        llm.Model.load(bad)
    cfg = json.loads((d / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(peftswift.NotFoundError, match="model.safetensors"):
        llm.Model.load(bad)
    (bad / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(peftswift.CorruptDataError):
        llm.Model.load(bad)


def test_peft_made_adapter_loads_and_reproduces_peft(hf_dirs, tmp_path, rng):
    from peft import LoraConfig, get_peft_model
    d, ref = hf_dirs[torch.float32]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    pm = get_peft_model(ref, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32) * 0.1))
    pm.save_pretrained(tmp_path / "peft")
    m = llm.Model.load(d, quantize=False)
    m.load_adapter(tmp_path / "peft", "x")
    assert sorted(m.adapter_modules("x")) == sorted(
        f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    ids = rng.integers(0, 264, size=(1, 24))
    with torch.no_grad():
        want = pm(torch.tensor(ids)).logits.numpy()
    assert rel(m.logits(ids), want) < 1e-5
    m.set_adapter(None)
    with torch.no_grad(), pm.disable_adapter():
        base = pm(torch.tensor(ids)).logits.numpy()
    assert rel(m.logits(ids), base) < 1e-5
