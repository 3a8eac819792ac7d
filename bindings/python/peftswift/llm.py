"""Language models: load a Llama-architecture model (GGUF file or Hugging Face checkpoint
directory), quantize its projections to NF4 + double quantization as it loads, attach LoRA
adapters, fine-tune them (QLoRA), generate text, and save PEFT adapter directories that
``PeftModel.from_pretrained`` loads onto the transformers model.

    from peftswift import llm
    m = llm.Model.load("SmolLM2-135M-Instruct.Q4_1.gguf")          # NF4 + double-quant base
    t = llm.Trainer(m, ["notes.txt"], steps=50, seq_len=256, output_dir="out")
    t.train(lambda p: print(p["step"], p["loss"]) or True)           # saves out/ at the end
    print(m.detokenize(m.generate(m.chat_prompt("Hello!"))))
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import _native
from .lora import _INIT, _Borrowed
from .optim import _SCHEDULES
from .quant import _QUANT_TYPES

_PRETOK = {None: _native.PST_PRETOK_AUTO, "auto": _native.PST_PRETOK_AUTO, "gpt2": _native.PST_PRETOK_GPT2,
           "smollm": _native.PST_PRETOK_DIGITS, "digits": _native.PST_PRETOK_DIGITS}
_FORMAT = {"text": _native.PST_DATA_TEXT, "jsonl": _native.PST_DATA_JSONL}


def _ids(x, what: str = "ids") -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must hold integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _paths(data) -> List[str]:
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    return [os.fspath(p) for p in data]


def compute_dtype_code(dtype) -> int:
    """PST_DTYPE_F32 or PST_DTYPE_BF16 for "fp32"/"float32" or "bf16"/"bfloat16" (torch dtypes too)."""
    name = str(dtype).replace("torch.", "").lower()
    codes = {"fp32": _native.PST_DTYPE_F32, "float32": _native.PST_DTYPE_F32,
             "bf16": _native.PST_DTYPE_BF16, "bfloat16": _native.PST_DTYPE_BF16}
    if name not in codes:
        raise ValueError(f"compute_dtype {dtype!r} must be 'fp32' or 'bf16'")
    return codes[name]


class Model:
    """A Llama-architecture causal LM with its tokenizer. Use ``Model.load``."""

    def __init__(self, handle, path: str):
        self._h = handle
        self.path = path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], quantize: bool = True, quant_type: str = "nf4", blocksize: int = 64,
             double_quant: bool = True, pretokenizer: Optional[str] = None, compute_dtype: str = "fp32") -> "Model":
        """Loads a GGUF file or a Hugging Face checkpoint directory. With ``quantize`` (QLoRA's
        base) each projection becomes 4-bit (``quant_type``, ``blocksize``, ``double_quant``) as
        it loads. ``pretokenizer``: None (the file's own), "gpt2" (what transformers rebuilds
        from a GGUF) or "smollm"/"digits". ``compute_dtype``: "fp32" or "bf16" (the products with
        the frozen weights in bf16 with fp32 sums, as bitsandbytes' bnb_4bit_compute_dtype=
        torch.bfloat16; needs AVX512_BF16, else peftswift.UnsupportedCPUError)."""
        if quant_type not in _QUANT_TYPES:
            raise ValueError(f"quant_type {quant_type!r} must be 'nf4' or 'fp4'")
        if pretokenizer not in _PRETOK:
            raise ValueError(f"pretokenizer {pretokenizer!r} must be None, 'gpt2' or 'smollm'")
        p = os.fspath(path)
        h = _native.llm_load(path=p, quantize=int(bool(quantize)), quant_type=_QUANT_TYPES[quant_type],
                             blocksize=int(blocksize), double_quant=int(bool(double_quant)),
                             pretokenizer=_PRETOK[pretokenizer], compute_dtype=compute_dtype_code(compute_dtype))
        m = cls(h, p)
        m._compute_dtype = "bf16" if compute_dtype_code(compute_dtype) == _native.PST_DTYPE_BF16 else "fp32"
        return m

    @property
    def compute_dtype(self) -> str:
        """"fp32" or "bf16": the precision of the products with the frozen weights."""
        return getattr(self, "_compute_dtype", "fp32")

    def set_compute_dtype(self, dtype: str) -> None:
        """Switches the products with the frozen weights to "fp32" or "bf16" (pst_llm_set_compute_dtype)."""
        code = compute_dtype_code(dtype)
        _native.llm_set_compute_dtype(llm=self._h, dtype=code)
        self._compute_dtype = "bf16" if code == _native.PST_DTYPE_BF16 else "fp32"

    @property
    def info(self) -> dict:
        return _native.llm_info(llm=self._h)

    # ---- tokenizer
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> List[int]:
        flags = ((_native.PST_TOKENIZE_ADD_SPECIAL if add_special else 0)
                 | (_native.PST_TOKENIZE_PARSE_SPECIAL if parse_special else 0))
        return _native.llm_tokenize(llm=self._h, text=text, flags=flags)

    def detokenize(self, ids, skip_special: bool = False) -> str:
        return _native.llm_detokenize(llm=self._h, ids=_ids(ids).ravel(),
                                      flags=_native.PST_DETOKENIZE_SKIP_SPECIAL if skip_special else 0)

    def chat_prompt(self, user: str, system: Optional[str] = None) -> List[int]:
        """A one-turn ChatML prompt ending with the assistant header."""
        return _native.llm_chat_prompt(llm=self._h, user=user, system=system)

    # ---- forward / backward
    def logits(self, ids) -> np.ndarray:
        """Float32 logits (B, T, V) for ids (B, T); (T, V) for 1-D ids. Dropout off."""
        a = _ids(ids)
        if a.ndim not in (1, 2):
            raise ValueError(f"ids must be 1-D or 2-D, got shape {a.shape}")
        b, t = (1, a.shape[0]) if a.ndim == 1 else a.shape
        out = np.empty((b, t, self.info["vocab"]), dtype=np.float32)
        _native.llm_logits(llm=self._h, ids=a.ravel(), batch=b, seq_len=t, logits=out)
        return out[0] if a.ndim == 1 else out

    def loss(self, ids, labels=None) -> float:
        """transformers' causal-LM loss (position t predicts labels[t+1], -100 ignored)."""
        a = _ids(ids)
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        lab = None
        if labels is not None:
            lab = _ids(labels, "labels")
            if lab.size != a.size:
                raise ValueError(f"labels has {lab.size} values, ids {a.size}")
            lab = lab.ravel()
        return _native.llm_loss(llm=self._h, ids=a2.ravel(), labels=lab, batch=a2.shape[0], seq_len=a2.shape[1])

    def backward(self) -> None:
        _native.llm_backward(llm=self._h)

    def zero_grad(self) -> None:
        _native.llm_zero_grad(llm=self._h)

    def train(self, mode: bool = True) -> "Model":
        _native.llm_set_training(llm=self._h, training=bool(mode))
        return self

    def eval(self) -> "Model":
        return self.train(False)

    # ---- adapters
    def add_adapter(self, name: str = "default", r: int = 8, lora_alpha: float = 16, lora_dropout: float = 0.0,
                    use_rslora: bool = False, init: Union[str, bool] = "kaiming", seed: int = 0,
                    target_modules: Optional[Iterable[str]] = None) -> None:
        if init not in _INIT:
            raise ValueError(f"init {init!r} must be 'kaiming', 'gaussian' or 'zeros'")
        t = None if target_modules is None else ",".join(target_modules)
        _native.llm_add_adapter(llm=self._h, name=name, r=int(r), alpha=float(lora_alpha), dropout=float(lora_dropout),
                                use_rslora=bool(use_rslora), init=_INIT[init], seed=int(seed) & (2**64 - 1),
                                target_modules=t)

    def delete_adapter(self, name: str) -> None:
        _native.llm_delete_adapter(llm=self._h, name=name)

    def set_adapter(self, name: Optional[str]) -> None:
        """Makes ``name`` the active adapter (None: the base model alone)."""
        _native.llm_set_adapter(llm=self._h, name=name)

    def set_adapters_enabled(self, enabled: bool, name: str = "default") -> None:
        self.set_adapter(name if enabled else None)

    def save_adapter(self, directory: Union[str, os.PathLike], name: str = "default") -> None:
        """A PEFT directory (adapter_config.json + adapter_model.safetensors, HF module names)."""
        _native.llm_save_adapter(llm=self._h, adapter=name, directory=os.fspath(directory))

    def load_adapter(self, directory: Union[str, os.PathLike], name: str = "default") -> None:
        _native.llm_load_adapter(llm=self._h, directory=os.fspath(directory), name=name)

    def modules(self) -> List[str]:
        """Every projection's Hugging Face module path (model.layers.N.self_attn.q_proj, ...)."""
        return _native.llm_modules(llm=self._h)

    def adapter_modules(self, name: str = "default") -> List[str]:
        out = []
        for m in self.modules():
            try:
                _native.llm_adapter_tensor(llm=self._h, module_path=m, adapter=name, which=_native.PST_LORA_A)
                out.append(m)
            except _native.NotFoundError:
                pass
        return out

    def _tensor(self, module: str, name: str, which: int) -> np.ndarray:
        addr, rows, cols = _native.llm_adapter_tensor(llm=self._h, module_path=module, adapter=name, which=which)
        return np.asarray(_Borrowed(self, addr, (rows, cols)))

    def lora_A(self, module: str, name: str = "default") -> np.ndarray:
        """A writable view (r, in) of the adapter's A on ``module``."""
        return self._tensor(module, name, _native.PST_LORA_A)

    def lora_B(self, module: str, name: str = "default") -> np.ndarray:
        """A writable view (out, r) of the adapter's B on ``module``."""
        return self._tensor(module, name, _native.PST_LORA_B)

    def grad_A(self, module: str, name: str = "default") -> np.ndarray:
        return self._tensor(module, name, _native.PST_LORA_GRAD_A)

    def grad_B(self, module: str, name: str = "default") -> np.ndarray:
        return self._tensor(module, name, _native.PST_LORA_GRAD_B)

    # ---- generation
    def generate(self, prompt_ids, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, disable_adapters: bool = False, stop_ids: Optional[Sequence[int]] = None,
                 stop_at_eos: bool = True, on_token: Optional[Callable[[int, bytes], Optional[bool]]] = None) -> List[int]:
        """New token ids after ``prompt_ids`` (KV cache; greedy at temperature 0). ``on_token``
        gets (id, bytes) for each; returning False stops."""
        stops = None if not stop_ids else _ids(list(stop_ids), "stop_ids")
        return _native.llm_generate(llm=self._h, prompt=_ids(prompt_ids, "prompt_ids").ravel(),
                                    max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                                    top_k=int(top_k), seed=int(seed) & (2**64 - 1), disable_adapters=bool(disable_adapters),
                                    stop_at_eos=bool(stop_at_eos), stop_ids=stops, callback=on_token)


class Trainer:
    """A QLoRA fine-tuning run: tokenized data, a new adapter, (paged, optionally 8-bit) AdamW,
    warm-up + schedule, clipping, checkpoints that resume bit for bit.

    ``data``: file paths; ``format`` "text" (UTF-8 text packed into ``seq_len`` rows) or
    "jsonl" (lines of {"instruction": ..., "response": ...}, ChatML, loss on responses only).
    """

    def __init__(self, model: Model, data, seq_len: int = 256, format: str = "text", steps: int = 100,
                 batch_size: int = 4, gradient_accumulation: int = 1, learning_rate: float = 2e-4, warmup_steps: int = 0,
                 schedule: str = "cosine", weight_decay: float = 0.0, clip_norm: float = 1.0, optimizer_8bit: bool = False,
                 paged_budget_bytes: int = 0, r: int = 16, lora_alpha: float = 32, lora_dropout: float = 0.05,
                 target_modules: Optional[Iterable[str]] = None, seed: int = 42, shuffle: bool = True,
                 checkpoint_every: int = 0, output_dir=None, recompute: bool = False, adapter_name: str = "default",
                 resume_from=None, text_separator: Optional[str] = None, system_prompt: Optional[str] = None):
        if format not in _FORMAT:
            raise ValueError(f"format {format!r} must be 'text' or 'jsonl'")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule {schedule!r} must be one of {sorted(_SCHEDULES)}")
        opts = {
            "format": _FORMAT[format], "seq_len": int(seq_len), "steps": int(steps), "batch_size": int(batch_size),
            "gradient_accumulation": int(gradient_accumulation), "learning_rate": float(learning_rate),
            "warmup_steps": int(warmup_steps), "schedule": _SCHEDULES[schedule], "weight_decay": float(weight_decay),
            "clip_norm": float(clip_norm), "optimizer_8bit": int(bool(optimizer_8bit)),
            "paged_budget_bytes": int(paged_budget_bytes), "r": int(r), "lora_alpha": float(lora_alpha),
            "lora_dropout": float(lora_dropout),
            "target_modules": None if target_modules is None else ",".join(target_modules),
            "seed": int(seed) & (2**63 - 1), "shuffle": int(bool(shuffle)), "checkpoint_every": int(checkpoint_every),
            "output_dir": None if output_dir is None else os.fspath(output_dir), "recompute": int(bool(recompute)),
            "adapter_name": adapter_name, "resume_from": None if resume_from is None else os.fspath(resume_from),
            "text_separator": text_separator, "system_prompt": system_prompt,
        }
        self.model = model
        self._h = _native.trainer_create(llm=model._h, data_paths=_paths(data), params=opts)

    def step(self) -> dict:
        """One optimizer step; returns the progress (step, loss, learning_rate, grad_norm,
        tokens_per_second, resident_bytes, elapsed_seconds, checkpoint)."""
        return _native.trainer_step(trainer=self._h)

    def train(self, callback: Optional[Callable[[dict], Optional[bool]]] = None) -> None:
        """The remaining steps; ``callback(progress)`` after each (False stops). Saves the adapter
        to ``output_dir`` at the end when given."""
        _native.trainer_train(trainer=self._h, callback=callback)

    def save_adapter(self, directory) -> None:
        _native.trainer_save_adapter(trainer=self._h, directory=os.fspath(directory))

    def save_checkpoint(self, directory) -> None:
        _native.trainer_save_checkpoint(trainer=self._h, directory=os.fspath(directory))

    @property
    def info(self) -> dict:
        return _native.trainer_info(trainer=self._h)

    @property
    def completed_steps(self) -> int:
        return self.info["completed_steps"]


def latest_checkpoint(directory) -> Optional[str]:
    """The newest complete checkpoint-<N> under ``directory``, or None."""
    return _native.latest_checkpoint(directory=os.fspath(directory))
