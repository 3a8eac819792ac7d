"""numpy/PyTorch conversions shared by the Pythonic layer (no copies where avoidable)."""
from __future__ import annotations

import numpy as np

from . import _native

F32, F16, BF16 = _native.PST_DTYPE_F32, _native.PST_DTYPE_F16, _native.PST_DTYPE_BF16
_NAMES = {F32: "float32", F16: "float16", BF16: "bfloat16"}
_CODES = {v: k for k, v in _NAMES.items()}


def dtype_code(name: str) -> int:
    try:
        return _CODES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} must be one of float32, float16, bfloat16") from None


def dtype_name(code: int) -> str:
    return _NAMES[code]


def is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def to_numpy(x, *, what: str = "A"):
    """Returns (array, dtype code or None, was_torch). bf16 comes back as a uint16 view.

    Accepts numpy arrays, ml_dtypes bfloat16 arrays, PyTorch CPU tensors (any dtype) and
    anything np.asarray takes. Arrays stay views of the caller's memory when C-contiguous and
    in native byte order; a non-native array ('>f4' on this little-endian machine) is converted
    to native order (a copy holding the same values), never passed on with its bytes as they
    are: the engine and every file it writes are little-endian, as safetensors.numpy, which
    byte-swaps such arrays before writing."""
    if is_torch(x):
        import torch

        t = x.detach()
        if t.device.type != "cpu":
            raise ValueError(f"{what} is on {t.device}; peftswift works on CPU tensors")
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16), BF16, True
        a = t.numpy()
        return a, _float_code(a.dtype), True
    a = np.asarray(x)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if not a.flags.c_contiguous:  # (np.ascontiguousarray would also turn a 0-d array into 1-d)
        a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16), BF16, False
    return a, _float_code(a.dtype), False


def _float_code(dt):
    if dt == np.float32:
        return F32
    if dt == np.float16:
        return F16
    return None


def empty(shape, code: int):
    """An output array for dtype code; bf16 as uint16 storage."""
    return np.empty(shape, dtype={F32: np.float32, F16: np.float16, BF16: np.uint16}[code])


def wrap(a, code: int, as_torch: bool):
    """Presents an output array as the caller expects: bf16 as ml_dtypes.bfloat16 (numpy) or
    torch.bfloat16 (torch), without copying."""
    if as_torch:
        import torch

        t = torch.from_numpy(a)
        return t.view(torch.bfloat16) if code == BF16 else t
    if code == BF16:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
            return a
        return a.view(ml_dtypes.bfloat16)
    return a
