"""Paged memory and AdamW optimizers (torch.optim.AdamW semantics in 32-bit, bitsandbytes'
AdamW8bit in 8-bit), over numpy arrays or peftswift LoRA layers.

    pager = peftswift.Pager(budget_bytes=256 << 20)
    opt = peftswift.AdamW(layer.parameters(), lr=1e-3, optim_bits=8, pager=pager)
    ...; opt.step(); opt.zero_grad(); pager.stats()
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from . import _native
from .lora import _Borrowed


class Pager:
    """Fixed-size pages under a RAM budget; least-recently-used unpinned pages spill to an
    unlinked file in spill_dir and come back on demand. page_size 0 means 4 MiB."""

    def __init__(self, budget_bytes: int, page_size: int = 0, spill_dir: Optional[str] = None):
        self._h = _native.pager_create(budget_bytes=int(budget_bytes), page_size=int(page_size), spill_dir=spill_dir)

    @property
    def budget(self) -> int:
        return self.stats()["budget_bytes"]

    @budget.setter
    def budget(self, value: int) -> None:
        _native.pager_set_budget(pager=self._h, budget_bytes=int(value))

    def stats(self) -> dict:
        """resident/peak/pinned bytes, pages and bytes spilled/read back, I/O seconds."""
        return _native.pager_stats(pager=self._h)

    def alloc(self, nbytes: int) -> "PagedBuffer":
        return PagedBuffer(self, nbytes)


class PagedBuffer:
    """A zero-filled buffer living in a Pager. Access it through acquire()/release() or the
    `pinned()` context manager, which give numpy views valid until the release."""

    def __init__(self, pager: Pager, nbytes: int):
        self.pager = pager
        self.nbytes = int(nbytes)
        self._h = _native.paged_alloc(pager=pager._h, bytes=self.nbytes)

    def acquire(self, offset: int = 0, count: Optional[int] = None, dtype=np.uint8, writable: bool = True) -> np.ndarray:
        count = self.nbytes - offset if count is None else count
        addr = _native.paged_acquire(buffer=self._h, offset=int(offset), count=int(count), for_writing=bool(writable))
        arr = np.asarray(_Borrowed(self, addr, (count,), "|u1"))  # keeps this buffer (and pager) alive
        return arr.view(np.dtype(dtype))

    def release(self, offset: int = 0, count: Optional[int] = None) -> None:
        count = self.nbytes - offset if count is None else count
        _native.paged_release(buffer=self._h, offset=int(offset), count=int(count))

    @contextlib.contextmanager
    def pinned(self, offset: int = 0, count: Optional[int] = None, dtype=np.uint8, writable: bool = True):
        arr = self.acquire(offset, count, dtype, writable)
        try:
            yield arr
        finally:
            self.release(offset, count)

    def prefetch(self) -> None:
        _native.paged_prefetch(buffer=self._h)


class AdamW:
    """AdamW over (param, grad) float32 arrays updated in place: optim_bits=32 follows
    torch.optim.AdamW, optim_bits=8 bitsandbytes' AdamW8bit (blockwise 8-bit moments, params
    under min_8bit_size elements in fp32). With a pager, the state lives in it (paged AdamW).
    params: an iterable of (param, grad) pairs, e.g. LoraLinear.parameters()."""

    def __init__(self, params: Iterable[Tuple[np.ndarray, np.ndarray]], lr: float = 1e-3,
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 optim_bits: int = 32, min_8bit_size: int = 4096, pager: Optional[Pager] = None):
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits ({optim_bits}) must be 8 or 32")
        self.base_lr = float(lr)
        self.pager = pager
        self._h = _native.adamw_create(
            lr=float(lr), beta1=float(betas[0]), beta2=float(betas[1]), eps=float(eps), weight_decay=float(weight_decay),
            state_format=_native.PST_OPTIM_STATE_8BIT if optim_bits == 8 else _native.PST_OPTIM_STATE_F32,
            min_8bit_size=int(min_8bit_size), pager=None if pager is None else pager._h)
        self._keep = []  # the optimizer holds pointers into these arrays: keep them alive
        for p, g in params:
            self.add_param(p, g)

    def add_param(self, param: np.ndarray, grad: np.ndarray) -> int:
        for a, what in ((param, "param"), (grad, "grad")):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.writeable:
                raise TypeError(f"{what} must be a writable C-contiguous float32 numpy array")
        self._keep.append((param, grad))
        return _native.adamw_add_param(opt=self._h, param=param, grad=grad)

    def step(self) -> None:
        _native.adamw_step(opt=self._h)

    def zero_grad(self) -> None:
        _native.adamw_zero_grad(opt=self._h)

    def clip_grad_norm(self, max_norm: float) -> float:
        """torch.nn.utils.clip_grad_norm_ over every registered gradient; returns the norm."""
        return _native.adamw_clip_grad_norm(opt=self._h, max_norm=float(max_norm))

    def set_lr(self, lr: float) -> None:
        _native.adamw_set_lr(opt=self._h, lr=float(lr))

    def state_dict(self) -> bytes:
        """The whole state (versioned, checksummed); load_state_dict resumes exactly."""
        return _native.adamw_save_state(opt=self._h)

    def load_state_dict(self, state: bytes) -> None:
        _native.adamw_load_state(opt=self._h, buf=state)


# transformers' schedule names for the C constants (llm.Trainer uses the same)
_SCHEDULES = {"constant": _native.PST_LR_CONSTANT, "constant_with_warmup": _native.PST_LR_CONSTANT_WARMUP,
              "linear": _native.PST_LR_LINEAR, "cosine": _native.PST_LR_COSINE}


def lr_multiplier(schedule: str, step: int, warmup_steps: int = 0, total_steps: int = 0, cycles: float = 0.5) -> float:
    """Hugging Face transformers' schedules: "constant", "constant_with_warmup", "linear",
    "cosine"; step is 0-based."""
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule {schedule!r} must be one of {sorted(_SCHEDULES)}")
    return _native.lr_multiplier(kind=_SCHEDULES[schedule], step=int(step), warmup=int(warmup_steps),
                                 total_steps=int(total_steps), cycles=float(cycles))

