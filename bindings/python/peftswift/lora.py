"""LoRA / QLoRA linear layers over numpy arrays (PEFT's lora.Linear and lora.bnb.Linear4bit).

    y = x @ W.T + b + sum over active adapters of weight * scaling * dropout(x) @ A.T @ B.T

A is (r, in), B is (out, r), scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora).
The adapter tensors are numpy views of the engine's own storage: write them to load weights,
read them (and their gradients) to train.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from . import _native
from .quant import QuantState, _block_scales, _f32, _quant_handle  # noqa: F401

# PEFT's init_lora_weights values for the C constants (llm.py uses the same)
_INIT = {"kaiming": _native.PST_LORA_INIT_KAIMING, True: _native.PST_LORA_INIT_KAIMING,
         "gaussian": _native.PST_LORA_INIT_GAUSSIAN, "zeros": _native.PST_LORA_INIT_ZEROS,
         False: _native.PST_LORA_INIT_ZEROS}


class _Borrowed:
    """Keeps the layer alive for as long as a numpy view of its memory exists."""

    def __init__(self, owner, address: int, shape, typestr: str = "<f4"):
        self._owner = owner
        self.__array_interface__ = {"shape": tuple(shape), "typestr": typestr, "data": (address, False), "version": 3}


class LoraLinear:
    """A linear layer with a frozen base (dense float32, or 4-bit nf4/fp4 with optional double
    quantization) and named LoRA adapters.

    LoraLinear(weight, bias=None)                 dense base, weight (out, in) float32
    LoraLinear.quantized(packed, quant_state, bias=None)   4-bit base (bitsandbytes' layout)
    """

    def __init__(self, weight, bias=None, compute_dtype: str = "fp32"):
        w = _f32(weight, "weight")
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out, in), got shape {w.shape}")
        self.out_features, self.in_features = w.shape
        b = None if bias is None else _f32(bias, "bias")
        self._h = _native.lora_create_dense(weight=w, out_features=self.out_features, in_features=self.in_features, bias=b)
        self._q = None
        self.set_compute_dtype(compute_dtype)

    @classmethod
    def quantized(cls, packed, quant_state: QuantState, bias=None, compute_dtype: str = "fp32") -> "LoraLinear":
        """A QLoRA layer over a 4-bit weight of shape (out, in) from quantize_4bit (or a
        bitsandbytes Linear4bit state dict read with QuantState.from_dict)."""
        st = quant_state
        if st.shape is None or len(st.shape) != 2:
            raise ValueError(f"quant_state.shape must be (out, in), got {st.shape}")
        self = cls.__new__(cls)
        self.out_features, self.in_features = st.shape
        self._q = _quant_handle(packed, st)  # the layer borrows it: kept alive with the layer
        b = None if bias is None else _f32(bias, "bias")
        self._h = _native.lora_create_quantized(base=self._q, bias=b)
        self.set_compute_dtype(compute_dtype)
        return self

    def set_compute_dtype(self, dtype: str) -> None:
        """"fp32" (default) or "bf16": the precision of the base products x·Wᵀ and dy·W (bf16
        operands, fp32 sums: bitsandbytes' bnb_4bit_compute_dtype=torch.bfloat16; the LoRA branch
        and gradients stay fp32). bf16 needs AVX512_BF16 (else UnsupportedCPUError)."""
        from .llm import compute_dtype_code
        code = compute_dtype_code(dtype)
        _native.lora_set_compute_dtype(layer=self._h, dtype=code)
        self.compute_dtype = "bf16" if code == _native.PST_DTYPE_BF16 else "fp32"

    # ---- adapters
    def add_adapter(self, name: str = "default", r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                    use_rslora: bool = False, init_lora_weights="kaiming", seed: int = 0) -> None:
        """PEFT's LoraConfig fields. B starts at zero; A per init_lora_weights ("kaiming" —
        PEFT's default True — "gaussian", or "zeros")."""
        if init_lora_weights not in _INIT:
            raise ValueError(f"init_lora_weights {init_lora_weights!r} must be 'kaiming', 'gaussian', 'zeros', True or False")
        _native.lora_add_adapter(layer=self._h, name=name, r=int(r), alpha=float(lora_alpha), dropout=float(lora_dropout),
                                 use_rslora=bool(use_rslora), init=_INIT[init_lora_weights], seed=int(seed) & (2**64 - 1))

    def delete_adapter(self, name: str) -> None:
        _native.lora_delete_adapter(layer=self._h, name=name)

    def set_adapter(self, names, weights: Optional[Sequence[float]] = None) -> None:
        """Chooses the active adapters (a name or a list), each with its weight (default 1)."""
        if isinstance(names, str):
            names = [names]
        _native.lora_set_active(layer=self._h, names=list(names),
                                weights=None if weights is None else [float(w) for w in weights])

    def disable_adapters(self) -> None:
        _native.lora_set_active(layer=self._h, names=[], weights=None)

    def adapter_info(self, name: str) -> dict:
        r, alpha, dropout, rs, scaling, active, weight, merged = _native.lora_adapter_info(layer=self._h, name=name)
        return {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": rs, "scaling": scaling,
                "active": active, "weight": weight, "merged": merged}

    def _tensor(self, name: str, which: int) -> np.ndarray:
        addr, rows, cols = _native.lora_tensor(layer=self._h, name=name, which=which)
        return np.asarray(_Borrowed(self, addr, (rows, cols)))

    def lora_A(self, name: str = "default") -> np.ndarray:
        """A view (r, in) of the adapter's A, writable in place."""
        return self._tensor(name, _native.PST_LORA_A)

    def lora_B(self, name: str = "default") -> np.ndarray:
        """A view (out, r) of the adapter's B, writable in place."""
        return self._tensor(name, _native.PST_LORA_B)

    def grad_A(self, name: str = "default") -> np.ndarray:
        return self._tensor(name, _native.PST_LORA_GRAD_A)

    def grad_B(self, name: str = "default") -> np.ndarray:
        return self._tensor(name, _native.PST_LORA_GRAD_B)

    @property
    def bias(self) -> Optional[np.ndarray]:
        b, _ = _native.lora_bias(layer=self._h)
        return np.asarray(_Borrowed(self, b, (self.out_features,))) if b else None

    @property
    def grad_bias(self) -> Optional[np.ndarray]:
        _, g = _native.lora_bias(layer=self._h)
        return np.asarray(_Borrowed(self, g, (self.out_features,))) if g else None

    def parameters(self, name: str = "default"):
        """[(A, grad_A), (B, grad_B)] views, for an optimizer."""
        return [(self.lora_A(name), self.grad_A(name)), (self.lora_B(name), self.grad_B(name))]

    # ---- compute
    def train(self, mode: bool = True) -> "LoraLinear":
        _native.lora_set_training(layer=self._h, training=bool(mode))
        return self

    def eval(self) -> "LoraLinear":
        return self.train(False)

    def forward(self, x) -> np.ndarray:
        """x: (..., in) float32 -> y: (..., out)."""
        a = _f32(x, "x")
        if a.shape[-1] != self.in_features:
            raise ValueError(f"x has {a.shape[-1]} features, expected in_features = {self.in_features}")
        m = a.size // self.in_features
        y = np.empty(a.shape[:-1] + (self.out_features,), dtype=np.float32)
        _native.lora_forward(layer=self._h, x=a, m=m, y=y)
        return y

    __call__ = forward

    def backward(self, dy, need_dx: bool = True, bias_grad: bool = True) -> Optional[np.ndarray]:
        """Accumulates the adapters' gradients from dy (..., out); returns dx (..., in)."""
        g = _f32(dy, "dy")
        if g.shape[-1] != self.out_features:
            raise ValueError(f"dy has {g.shape[-1]} features, expected out_features = {self.out_features}")
        m = g.size // self.out_features
        dx = np.empty(g.shape[:-1] + (self.in_features,), dtype=np.float32) if need_dx else None
        _native.lora_backward(layer=self._h, dy=g, m=m, dx=dx, bias_grad=bool(bias_grad))
        return dx

    def zero_grad(self) -> None:
        _native.lora_zero_grad(layer=self._h)

    def merge(self, adapter_names: Optional[Iterable[str]] = None) -> dict:
        """Merges adapters into the base; returns the requantization error {"max_abs", "rms"}
        (zeros on a dense base)."""
        mx, rms = _native.lora_merge(layer=self._h, names=None if adapter_names is None else list(adapter_names))
        return {"max_abs": mx, "rms": rms}

    def unmerge(self) -> None:
        """Takes every merged adapter out again (a 4-bit base gets its exact pre-merge codes)."""
        _native.lora_unmerge(layer=self._h)

    def base_weight(self) -> np.ndarray:
        """The effective base weight (out, in), dequantized when 4-bit."""
        out = np.empty((self.out_features, self.in_features), dtype=np.float32)
        _native.lora_base_weight(layer=self._h, out=out)
        return out
