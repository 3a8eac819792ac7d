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

_PRETOK = {None: 0, "auto": 0, "gpt2": 1, "smollm": 2, "digits": 2}
_QUANT = {"nf4": 0, "fp4": 1}
_INIT = {"kaiming": 0, True: 0, "gaussian": 1, "zeros": 2, False: 2}
_SCHEDULE = {"constant": 0, "constant_with_warmup": 1, "linear": 2, "cosine": 3}
_FORMAT = {"text": 0, "jsonl": 1}


class _Borrowed:
    """Keeps the model alive for as long as a numpy view of its memory exists."""

    def __init__(self, owner, address: int, shape):
        self._owner = owner
        self.__array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (address, False), "version": 3}


def _ids(x, what: str = "ids") -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must hold integers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int32)


def _paths(data) -> List[str]:
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    return [os.fspath(p) for p in data]


class Model:
    """A Llama-architecture causal LM with its tokenizer. Use ``Model.load``."""

    def __init__(self, handle, path: str):
        self._h = handle
        self.path = path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], quantize: bool = True, quant_type: str = "nf4", blocksize: int = 64,
             double_quant: bool = True, pretokenizer: Optional[str] = None) -> "Model":
        """Loads a GGUF file or a Hugging Face checkpoint directory. With ``quantize`` (QLoRA's
        base) each projection becomes 4-bit (``quant_type``, ``blocksize``, ``double_quant``) as
        it loads. ``pretokenizer``: None (the file's own), "gpt2" (what transformers rebuilds
        from a GGUF) or "smollm"/"digits"."""
        if quant_type not in _QUANT:
            raise ValueError(f"quant_type {quant_type!r} must be 'nf4' or 'fp4'")
        if pretokenizer not in _PRETOK:
            raise ValueError(f"pretokenizer {pretokenizer!r} must be None, 'gpt2' or 'smollm'")
        p = os.fspath(path)
        h = _native.llm_load(p, int(bool(quantize)), _QUANT[quant_type], int(blocksize), int(bool(double_quant)),
                             _PRETOK[pretokenizer])
        return cls(h, p)

    @property
    def info(self) -> dict:
        return _native.llm_info(self._h)

    # ---- tokenizer
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> List[int]:
        return _native.llm_tokenize(self._h, text, (1 if add_special else 0) | (2 if parse_special else 0))

    def detokenize(self, ids, skip_special: bool = False) -> str:
        return _native.llm_detokenize(self._h, _ids(ids).ravel(), 1 if skip_special else 0)

    def chat_prompt(self, user: str, system: Optional[str] = None) -> List[int]:
        """A one-turn ChatML prompt ending with the assistant header."""
        return _native.llm_chat_prompt(self._h, user, system)

    # ---- forward / backward
    def logits(self, ids) -> np.ndarray:
        """Float32 logits (B, T, V) for ids (B, T); (T, V) for 1-D ids. Dropout off."""
        a = _ids(ids)
        if a.ndim not in (1, 2):
            raise ValueError(f"ids must be 1-D or 2-D, got shape {a.shape}")
        b, t = (1, a.shape[0]) if a.ndim == 1 else a.shape
        out = np.empty((b, t, self.info["vocab"]), dtype=np.float32)
        _native.llm_logits(self._h, a.ravel(), b, t, out)
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
        return _native.llm_loss(self._h, a2.ravel(), lab, a2.shape[0], a2.shape[1])

    def backward(self) -> None:
        _native.llm_simple(self._h, 0)

    def zero_grad(self) -> None:
        _native.llm_simple(self._h, 1)

    def train(self, mode: bool = True) -> "Model":
        _native.llm_simple(self._h, 2 if mode else 3)
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
        _native.llm_add_adapter(self._h, name, int(r), float(lora_alpha), float(lora_dropout), bool(use_rslora),
                                _INIT[init], int(seed) & (2**64 - 1), t)

    def delete_adapter(self, name: str) -> None:
        _native.llm_adapter_op(self._h, 0, name, None)

    def set_adapter(self, name: Optional[str]) -> None:
        """Makes ``name`` the active adapter (None: the base model alone)."""
        _native.llm_adapter_op(self._h, 1, name, None)

    def set_adapters_enabled(self, enabled: bool, name: str = "default") -> None:
        self.set_adapter(name if enabled else None)

    def save_adapter(self, directory: Union[str, os.PathLike], name: str = "default") -> None:
        """A PEFT directory (adapter_config.json + adapter_model.safetensors, HF module names)."""
        _native.llm_adapter_op(self._h, 2, name, os.fspath(directory))

    def load_adapter(self, directory: Union[str, os.PathLike], name: str = "default") -> None:
        _native.llm_adapter_op(self._h, 3, os.fspath(directory), name)

    def modules(self) -> List[str]:
        """Every projection's Hugging Face module path (model.layers.N.self_attn.q_proj, ...)."""
        return _native.llm_modules(self._h)

    def adapter_modules(self, name: str = "default") -> List[str]:
        out = []
        for m in self.modules():
            try:
                _native.llm_adapter_tensor(self._h, m, name, 0)
                out.append(m)
            except _native.NotFoundError:
                pass
        return out

    def _tensor(self, module: str, name: str, which: int) -> np.ndarray:
        addr, rows, cols = _native.llm_adapter_tensor(self._h, module, name, which)
        return np.asarray(_Borrowed(self, addr, (rows, cols)))

    def lora_A(self, module: str, name: str = "default") -> np.ndarray:
        """A writable view (r, in) of the adapter's A on ``module``."""
        return self._tensor(module, name, 0)

    def lora_B(self, module: str, name: str = "default") -> np.ndarray:
        """A writable view (out, r) of the adapter's B on ``module``."""
        return self._tensor(module, name, 1)

    def grad_A(self, module: str, name: str = "default") -> np.ndarray:
        return self._tensor(module, name, 2)

    def grad_B(self, module: str, name: str = "default") -> np.ndarray:
        return self._tensor(module, name, 3)

    # ---- generation
    def generate(self, prompt_ids, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, disable_adapters: bool = False, stop_ids: Optional[Sequence[int]] = None,
                 stop_at_eos: bool = True, on_token: Optional[Callable[[int, bytes], Optional[bool]]] = None) -> List[int]:
        """New token ids after ``prompt_ids`` (KV cache; greedy at temperature 0). ``on_token``
        gets (id, bytes) for each; returning False stops."""
        stops = None if not stop_ids else _ids(list(stop_ids), "stop_ids")
        return _native.llm_generate(self._h, _ids(prompt_ids, "prompt_ids").ravel(), int(max_new_tokens), float(temperature),
                                    float(top_p), int(top_k), int(seed) & (2**64 - 1), bool(disable_adapters),
                                    bool(stop_at_eos), stops, on_token)


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
        if schedule not in _SCHEDULE:
            raise ValueError(f"schedule {schedule!r} must be one of {sorted(_SCHEDULE)}")
        opts = {
            "format": _FORMAT[format], "seq_len": int(seq_len), "steps": int(steps), "batch_size": int(batch_size),
            "gradient_accumulation": int(gradient_accumulation), "learning_rate": float(learning_rate),
            "warmup_steps": int(warmup_steps), "schedule": _SCHEDULE[schedule], "weight_decay": float(weight_decay),
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
        self._h = _native.trainer_create(model._h, _paths(data), opts)

    def step(self) -> dict:
        """One optimizer step; returns the progress (step, loss, learning_rate, grad_norm,
        tokens_per_second, resident_bytes, elapsed_seconds, checkpoint)."""
        return _native.trainer_step(self._h)

    def train(self, callback: Optional[Callable[[dict], Optional[bool]]] = None) -> None:
        """The remaining steps; ``callback(progress)`` after each (False stops). Saves the adapter
        to ``output_dir`` at the end when given."""
        _native.trainer_train(self._h, callback)

    def save_adapter(self, directory) -> None:
        _native.trainer_save(self._h, 0, os.fspath(directory))

    def save_checkpoint(self, directory) -> None:
        _native.trainer_save(self._h, 1, os.fspath(directory))

    @property
    def info(self) -> dict:
        return _native.trainer_info(self._h)

    @property
    def completed_steps(self) -> int:
        return self.info["completed_steps"]


def latest_checkpoint(directory) -> Optional[str]:
    """The newest complete checkpoint-<N> under ``directory``, or None."""
    return _native.latest_checkpoint(os.fspath(directory))
