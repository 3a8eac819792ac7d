"""Files from the engine: safetensors (memory-mapped, zero-copy reads; atomic writes), PEFT
adapter directories, and bitsandbytes Linear4bit checkpoints."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _arrays, _native
from .lora import LoraLinear, _Borrowed
from .quant import QuantState, _QUANT_TYPES, _f32, _quant_handle

# safetensors dtype -> numpy typestr (BF16 comes out as ml_dtypes.bfloat16 when available)
_TYPESTR = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
            "I8": "|i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1", "BOOL": "|b1"}
_FROM_NUMPY = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
               "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}


class _File:
    """Keeps an open (mapped) safetensors file alive while any array view of it exists."""

    def __init__(self, path: str):
        self._h = _native.st_open(path=str(path))


class SafeTensors:
    """An open safetensors file (like safetensors.safe_open): keys(), metadata(), and
    get_tensor(name) as a read-only zero-copy view of the memory-mapped file."""

    def __init__(self, path):
        self._f = _File(path)
        self.path = str(path)
        self._names = [t[0] for t in _native.st_tensors(st=self._f._h)]

    def keys(self):
        return list(self._names)

    def metadata(self) -> Dict[str, str]:
        return _native.st_metadata(st=self._f._h)

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor called name (peftswift.NotFoundError, a KeyError, when there is none)."""
        if not isinstance(name, str):
            raise KeyError(f"{self.path}: no tensor {name!r} (names are str)")
        return _view(self._f, self.path, *_native.st_find(st=self._f._h, name=name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _view(f, path, name, dtype, shape, addr, nbytes):
    ts = _TYPESTR.get(dtype)
    if ts is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which numpy cannot hold")
    count = int(np.prod(shape)) if shape else 1
    if nbytes == 0:
        arr = np.empty(shape, dtype=np.dtype(ts))
    else:
        arr = np.asarray(_Borrowed(f, addr, (count,), ts)).reshape(shape)
    arr.flags.writeable = False
    return _arrays.wrap(arr, _arrays.BF16, False) if dtype == "BF16" else arr


def load_file(path) -> Dict[str, np.ndarray]:
    """All tensors of a safetensors file as read-only numpy arrays that view the memory-mapped
    file (no copy; the mapping lives as long as any of them). Like safetensors.numpy.load_file."""
    f = _File(path)
    return {t[0]: _view(f, str(path), *t) for t in _native.st_tensors(st=f._h)}


def load_metadata(path) -> Dict[str, str]:
    """The file's __metadata__ (empty when it has none)."""
    return _native.st_metadata(st=_File(path)._h)


def save_file(tensors: Mapping[str, np.ndarray], path, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes tensors (numpy arrays, ml_dtypes bfloat16 arrays or CPU torch tensors) as a
    safetensors file byte for byte as safetensors.numpy.save_file does; atomically (temporary
    file, fsync, rename): an existing file is never left half written.

    As safetensors: arrays in big-endian byte order are written little-endian (the format's
    order) with their values intact; metadata=None writes no __metadata__, metadata={} an
    empty one; names, keys and values are str (anything else is a TypeError) of any length,
    NUL characters included; the header may not exceed 100,000,000 bytes. safetensors writes
    several metadata keys in a random (hash) order; peftswift in the mapping's order."""
    items = []
    keep = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, not {type(name).__name__} ({name!r})")
        a, code, _ = _arrays.to_numpy(t, what=name)  # native byte order, C-contiguous
        dname = "bfloat16" if code == _arrays.BF16 else a.dtype.name
        st = _FROM_NUMPY.get(dname)
        if st is None:
            raise TypeError(f"tensor {name!r} has dtype {dname}, which safetensors cannot store")
        a = _little_endian(a)
        keep.append(a)
        items.append((name, st, tuple(int(s) for s in a.shape), a.reshape(-1).view(np.uint8)))
    md = None if metadata is None else dict(metadata)
    for k, v in (md or {}).items():  # as safetensors: str to str, nothing converted
        if not isinstance(k, str):
            raise TypeError(f"metadata key {k!r} is {type(k).__name__}, not str")
        if not isinstance(v, str):
            raise TypeError(f"metadata[{k!r}] is {type(v).__name__}, not str")
    _native.st_write(path=str(path), tensors=items, metadata=md)


def _little_endian(a: np.ndarray) -> np.ndarray:
    """a with its elements in little-endian byte order, the file's (safetensors.numpy
    byte-swaps the same way): a itself when it already is."""
    order = a.dtype.byteorder
    if order == "|" or order == "<" or (order == "=" and np.little_endian):
        return a
    return a.astype(a.dtype.newbyteorder("<"))


def save_adapter(directory, modules: Mapping[str, LoraLinear], adapter_name: str = "default",
                 base_model_name_or_path: Optional[str] = None) -> None:
    """Saves one adapter of several layers as PEFT does (adapter_model.safetensors +
    adapter_config.json). modules maps the model's module paths (e.g.
    "model.layers.0.self_attn.q_proj") to layers, so PeftModel.from_pretrained loads the
    directory onto the matching model."""
    paths = list(modules)
    _native.peft_save(directory=str(directory), adapter_name=adapter_name, layers=[modules[p]._h for p in paths],
                      module_paths=paths, base_model_name_or_path=base_model_name_or_path)


def load_adapter(directory, modules: Mapping[str, LoraLinear], adapter_name: str = "default") -> None:
    """Loads a PEFT adapter directory into the layers under adapter_name: all-or-nothing (every
    file, field and shape is checked before any layer changes)."""
    paths = list(modules)
    _native.peft_load(directory=str(directory), layers=[modules[p]._h for p in paths], module_paths=paths,
                      as_name=adapter_name)


def save_bnb_checkpoint(path, layers: Mapping[str, Tuple]) -> None:
    """Writes 4-bit layers as a bitsandbytes Linear4bit checkpoint (safetensors with
    bitsandbytes' keys under each module prefix). layers: module -> (packed, QuantState[, bias])."""
    mods, caps, biases = [], [], []
    for m, v in layers.items():
        packed, state = v[0], v[1]
        bias = v[2] if len(v) > 2 else None
        mods.append(m)
        caps.append(_quant_handle(packed, state))
        biases.append(None if bias is None else _f32(bias, "bias"))
    _native.bnb_save(path=str(path), weights=caps, biases=biases, modules=mods)


def load_bnb_checkpoint(path, module: str = "") -> Tuple[np.ndarray, QuantState, Optional[np.ndarray]]:
    """Reads one Linear4bit layer (module prefix, "" for none) of a bitsandbytes checkpoint,
    validated field by field: returns (packed, QuantState, bias or None)."""
    cap, bias = _native.bnb_load(path=str(path), module=module)
    d = _native.quant_state(q=cap)
    qt = {v: k for k, v in _QUANT_TYPES.items()}[d["quant_type"]]
    packed = np.frombuffer(d["packed"], dtype=np.uint8).reshape(-1, 1).copy()
    state = QuantState(absmax=np.frombuffer(d["absmax"], dtype=np.uint8 if d["nested"] else np.float32).copy(),
                       shape=d["shape"], code=np.frombuffer(d["code"], dtype=np.float32).copy(), blocksize=d["blocksize"],
                       quant_type=qt, dtype=_arrays.dtype_name(d["dtype"]))
    if d["nested"]:
        state.offset = np.float32(d["offset"])
        state.state2 = QuantState(absmax=np.frombuffer(d["nested_absmax"], dtype=np.float32).copy(),
                                  code=np.frombuffer(d["nested_code"], dtype=np.float32).copy(),
                                  blocksize=d["nested_blocksize"], dtype="float32")
        state.nested = True
    return packed, state, None if bias is None else np.frombuffer(bias, dtype=np.float32).copy()
