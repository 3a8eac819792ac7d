"""4-bit (NF4/FP4) and 8-bit blockwise quantization in bitsandbytes' own words.

The layout is bitsandbytes' to the bit (see peftswift.h, pst_quant_state): blocks of
`blocksize` consecutive elements of the flattened tensor, one float32 absmax per block, two
4-bit codes per byte with the even element in the high nibble; with compress_statistics the
absmax are themselves quantized to 8 bits (signed dynamic map, blocks of 256) around their mean.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

from . import _arrays, _native

# bitsandbytes' names for the C constants; the package's one copy of each mapping
_QUANT_TYPES = {"nf4": _native.PST_QUANT_NF4, "fp4": _native.PST_QUANT_FP4}
_CODEBOOKS = {"nf4": _native.PST_CODE_NF4, "fp4": _native.PST_CODE_FP4, "dynamic": _native.PST_CODE_DYNAMIC_SIGNED,
              "dynamic_signed": _native.PST_CODE_DYNAMIC_SIGNED, "dynamic_unsigned": _native.PST_CODE_DYNAMIC_UNSIGNED}


def codebook(name: str) -> np.ndarray:
    """bitsandbytes' tables: "nf4", "fp4" (16 values), "dynamic" / "dynamic_unsigned" (256)."""
    which = _CODEBOOKS.get(name)
    if which is None:
        raise ValueError(f"codebook {name!r} must be nf4, fp4, dynamic or dynamic_unsigned")
    out = np.empty(16 if which in (_native.PST_CODE_NF4, _native.PST_CODE_FP4) else 256, dtype=np.float32)
    _native.codebook(which=which, out=out)
    return out


def _f32(x, what: str) -> np.ndarray:
    a, code, _ = _arrays.to_numpy(x, what=what)
    if code != _arrays.F32:
        raise TypeError(f"{what} must be float32, got {a.dtype}")
    return a


def _u8(x, what: str) -> np.ndarray:
    a, _, _ = _arrays.to_numpy(x, what=what)
    if a.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8, got {a.dtype}")
    return a


class QuantState:
    """bitsandbytes' QuantState over numpy arrays.

    absmax: float32 per block, or uint8 codes when nested (double quantization);
    shape: the original shape; code: the 16-value map (quant_map); blocksize; quant_type
    ("nf4"/"fp4"; None for an 8-bit state); dtype: the original dtype name ("float32",
    "float16", "bfloat16"); offset: float32 mean of the absmax (nested only); state2: the
    nested 8-bit QuantState (absmax = nested_absmax, code = nested_quant_map, blocksize 256).
    """

    valid_quant_types = ("fp4", "nf4")
    valid_qs_type_keys = [f"bitsandbytes__{x}" for x in valid_quant_types]
    valid_qs_keys = ["absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
                     "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None,
                 offset=None, state2=None):
        self.absmax = absmax
        self.shape = tuple(shape) if shape is not None else None
        self.code = code
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.dtype = dtype
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None

    def __repr__(self) -> str:
        return (f"QuantState(quant_type={self.quant_type!r}, shape={self.shape}, dtype={self.dtype!r}, "
                f"blocksize={self.blocksize}, nested={self.nested})")

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        """bitsandbytes' QuantState.as_dict: with packed=True, the non-array items go into
        `quant_state.bitsandbytes__<type>` as the uint8-encoded JSON (json.dumps, default
        separators), exactly the keys a Linear4bit state dict carries after `weight.`."""
        d: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": self.dtype,
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            d.update({
                "nested_absmax": self.state2.absmax,
                "nested_blocksize": self.state2.blocksize,
                "nested_quant_map": np.array(self.state2.code, copy=True),
                "nested_dtype": self.state2.dtype,
                "nested_offset": float(self.offset),
            })
        if not packed or self.quant_type is None:
            return d
        arrays = {k: v for k, v in d.items() if isinstance(v, np.ndarray)}
        rest = {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}
        blob = json.dumps(rest).encode("utf-8")
        arrays["quant_state.bitsandbytes__" + self.quant_type] = np.frombuffer(blob, dtype=np.uint8).copy()
        return arrays

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device=None) -> "QuantState":
        """bitsandbytes' QuantState.from_dict: accepts the packed or unpacked form, with or
        without a `weight.`-style prefix, values as numpy arrays or CPU torch tensors."""
        del device
        d = dict(qs_dict)
        qs_keys = [k for k in d if "quant_state" in k and not isinstance(d[k], (str, int, float, type(None)))]
        if "quant_type" not in d:
            if not qs_keys:
                raise ValueError("Expected packed or unpacked quant_state items, found neither")
            if len(qs_keys) != 1 or qs_keys[0].split(".")[-1] not in cls.valid_qs_type_keys:
                raise ValueError(f"There should be exactly one `quant_state` item with ending from "
                                 f"{cls.valid_qs_type_keys}. Detected {qs_keys}.")
        if len(qs_keys) == 1:
            blob = bytes(np.asarray(_arrays.to_numpy(d.pop(qs_keys[0]))[0], dtype=np.uint8).reshape(-1))
            try:
                extra = json.loads(blob.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{qs_keys[0]} does not hold valid UTF-8 JSON: {e}") from None
            if not isinstance(extra, dict):
                raise ValueError(f"{qs_keys[0]} must hold a JSON object, got {type(extra).__name__}")
            d.update(extra)
        d = {k.split(".")[-1]: v for k, v in d.items()}
        unknown = set(d) - set(cls.valid_qs_keys)
        if unknown:
            raise ValueError(f"unknown quant state keys {sorted(unknown)}")
        qt = d.get("quant_type")
        if qt not in _QUANT_TYPES:
            raise ValueError(f"quant_type {qt!r} must be 'nf4' or 'fp4'")
        if "nested_absmax" in d:
            offset = np.float32(float(d["nested_offset"]))
            state2 = cls(absmax=_f32(d["nested_absmax"], "nested_absmax"), blocksize=int(d["nested_blocksize"]),
                         code=_f32(d["nested_quant_map"], "nested_quant_map"), dtype=str(d.get("nested_dtype", "float32")))
            absmax = _u8(d["absmax"], "absmax")
        else:
            offset, state2 = None, None
            absmax = _f32(d["absmax"], "absmax")
        dtype = str(d["dtype"])
        _arrays.dtype_code(dtype)
        return cls(quant_type=qt, absmax=absmax, blocksize=int(d["blocksize"]), code=_f32(d["quant_map"], "quant_map"),
                   dtype=dtype, shape=tuple(int(s) for s in d["shape"]) if d.get("shape") is not None else None,
                   offset=offset, state2=state2)


def quantize_4bit(A, blocksize: int = 64, quant_type: str = "nf4", compress_statistics: bool = False,
                  quant_storage=np.uint8, absmax=None, out=None):
    """bitsandbytes.functional.quantize_4bit on CPU, bit for bit.

    A: float32/float16/bfloat16 array or CPU tensor, any shape. Returns (packed, QuantState):
    packed is uint8 of shape ((n + 1) // 2, 1). With compress_statistics the absmax are
    double-quantized (offset = mean, 8-bit signed dynamic map, blocks of 256)."""
    if quant_storage not in (np.uint8, "uint8"):
        raise ValueError("quant_storage must be uint8")
    qt = _QUANT_TYPES.get(quant_type)
    if qt is None:
        raise ValueError(f"quant_type {quant_type!r} must be 'nf4' or 'fp4'")
    a, code, was_torch = _arrays.to_numpy(A)
    if code is None:
        raise TypeError(f"A must be float32, float16 or bfloat16, got {a.dtype}")
    n = a.size
    nblocks = -(-n // blocksize) if blocksize > 0 else 0
    packed = out if out is not None else np.empty(((n + 1) // 2, 1), dtype=np.uint8)
    am = absmax if absmax is not None else np.empty(max(nblocks, 0), dtype=np.float32)
    _native.quantize_4bit(x=a, dtype=code, n=n, blocksize=blocksize, quant_type=qt, packed=packed, absmax=am)
    state = QuantState(absmax=am, shape=a.shape, code=codebook(quant_type), blocksize=blocksize,
                       quant_type=quant_type, dtype=_arrays.dtype_name(code))
    if compress_statistics:
        q = np.empty(nblocks, dtype=np.uint8)
        nested = np.empty(-(-nblocks // 256), dtype=np.float32)
        offset = _native.double_quantize(absmax=am, nested_blocksize=256, q=q, nested_absmax=nested)
        state.absmax = q
        state.offset = np.float32(offset)
        state.state2 = QuantState(absmax=nested, code=codebook("dynamic"), blocksize=256, dtype="float32")
        state.nested = True
    if was_torch:
        import torch

        return torch.from_numpy(packed), state
    return packed, state


def _quant_handle(packed, state: QuantState):
    """The engine's copy of a 4-bit weight (a peftswift.quant capsule) from packed codes and their
    QuantState, checked field by field by the library."""
    p, _, _ = _arrays.to_numpy(packed, what="packed")
    nested = state.nested
    return _native.quant_from_state(
        packed=np.ascontiguousarray(p, dtype=np.uint8),
        absmax=np.ascontiguousarray(_arrays.to_numpy(state.absmax, what="absmax")[0]),  # native byte order
        code=_f32(state.code, "code"),
        nested_absmax=_f32(state.state2.absmax, "nested_absmax") if nested else None,
        nested_code=_f32(state.state2.code, "nested_code") if nested else None,
        offset=float(state.offset) if nested else 0.0,
        shape=tuple(state.shape), dtype=_arrays.dtype_code(state.dtype), quant_type=_QUANT_TYPES[state.quant_type],
        blocksize=int(state.blocksize), nested_blocksize=int(state.state2.blocksize) if nested else 256)


def _block_scales(state: QuantState) -> np.ndarray:
    if not state.nested:
        return _f32(state.absmax, "quant_state.absmax")
    s2 = state.state2
    q = _u8(state.absmax, "quant_state.absmax")
    scales = np.empty(q.size, dtype=np.float32)
    _native.dequantize_8bit(q=q, n=q.size, absmax=_f32(s2.absmax, "state2.absmax"), code=_f32(s2.code, "state2.code"),
                            blocksize=int(s2.blocksize), out=scales)
    scales += np.float32(state.offset)  # bitsandbytes: absmax = dequantize_blockwise(...); absmax += offset
    return scales


def dequantize_4bit(A, quant_state: Optional[QuantState] = None, absmax=None, out=None, blocksize: int = 64,
                    quant_type: str = "nf4"):
    """bitsandbytes.functional.dequantize_4bit on CPU, bit for bit: returns an array of
    quant_state.shape in quant_state.dtype (bf16 as ml_dtypes.bfloat16, or a torch tensor when
    A is one)."""
    p, _, was_torch = _arrays.to_numpy(A, what="A")
    if p.dtype != np.uint8:
        raise TypeError(f"A must be the uint8 packed codes, got {p.dtype}")
    if quant_state is None:
        if absmax is None:
            raise ValueError("give quant_state, or absmax with blocksize and quant_type")
        quant_state = QuantState(absmax=_f32(absmax, "absmax"), shape=(p.size * 2,), code=codebook(quant_type),
                                 blocksize=blocksize, quant_type=quant_type, dtype="float32")
    st = quant_state
    if st.quant_type not in _QUANT_TYPES:
        raise ValueError(f"quant_state.quant_type {st.quant_type!r} must be 'nf4' or 'fp4'")
    shape = tuple(st.shape)
    n = int(np.prod(shape)) if shape else 1
    code = _arrays.dtype_code(st.dtype)
    result = out if out is not None else _arrays.empty(shape, code)
    _native.dequantize_4bit(packed=p, absmax=_block_scales(st), code=_f32(st.code, "quant_state.code"),
                            quant_type=_QUANT_TYPES[st.quant_type], n=n, blocksize=int(st.blocksize), out=result,
                            out_dtype=code)
    return _arrays.wrap(result, code, was_torch)


def quantize_blockwise(A, code=None, absmax=None, out=None, blocksize: int = 4096, nested: bool = False):
    """bitsandbytes.functional.quantize_blockwise (float32 input): returns (uint8 codes shaped
    like A, QuantState(absmax, code, blocksize)). code defaults to the signed dynamic map."""
    if nested:
        raise NotImplementedError("nested=True is not supported by quantize_blockwise; use quantize_4bit(compress_statistics=True)")
    a = _f32(A, "A")
    cb = codebook("dynamic") if code is None else _f32(code, "code")
    n = a.size
    q = out if out is not None else np.empty(a.shape, dtype=np.uint8)
    am = absmax if absmax is not None else np.empty(-(-n // blocksize) if blocksize > 0 else 0, dtype=np.float32)
    _native.quantize_8bit(x=a, n=n, blocksize=blocksize, code=cb, q=q, absmax=am)
    return q, QuantState(absmax=am, code=cb, blocksize=blocksize, dtype="float32")


def dequantize_blockwise(A, quant_state: Optional[QuantState] = None, absmax=None, code=None, out=None,
                         blocksize: int = 4096, nested: bool = False):
    """bitsandbytes.functional.dequantize_blockwise: float32 array shaped like A."""
    del nested
    q = _u8(A, "A")
    if quant_state is None:
        if absmax is None:
            raise ValueError("give quant_state, or absmax (and code, blocksize)")
        quant_state = QuantState(absmax=_f32(absmax, "absmax"), code=codebook("dynamic") if code is None else code,
                                 blocksize=blocksize, dtype="float32")
    st = quant_state
    scales = _block_scales(st) if st.nested else _f32(st.absmax, "quant_state.absmax")
    result = out if out is not None else np.empty(q.shape, dtype=np.float32)
    _native.dequantize_8bit(q=q, n=q.size, absmax=scales, code=_f32(st.code, "quant_state.code"), blocksize=int(st.blocksize),
                            out=result)
    return result
