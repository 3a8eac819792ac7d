"""peftswift: QLoRA building blocks from a Swift engine (libpeftswift.so).

NF4/FP4 4-bit and 8-bit blockwise quantization bit-exact with bitsandbytes, double
quantization, LoRA/QLoRA layers, paged optimizers. numpy arrays in and out without copies;
PyTorch tensors are accepted where arrays are.
"""
from . import _native
from ._native import (  # noqa: F401  (the error hierarchy lives in the C layer)
    CorruptDataError,
    Error,
    ExistsError,
    IOError,
    InternalError,
    InvalidArgumentError,
    MisuseError,
    NonFiniteError,
    NotFoundError,
    OutOfMemoryError,
    ShapeError,
    UnsupportedError,
)
from . import files  # noqa: F401
from . import llm  # noqa: F401
from .files import load_adapter, load_bnb_checkpoint, save_adapter, save_bnb_checkpoint  # noqa: F401
from .lora import LoraLinear  # noqa: F401
from .optim import AdamW, PagedBuffer, Pager, lr_multiplier  # noqa: F401
from .quant import (  # noqa: F401
    QuantState,
    codebook,
    dequantize_4bit,
    dequantize_blockwise,
    quantize_4bit,
    quantize_blockwise,
)

__version__ = _native.version()
ABI_VERSION = _native.abi_version()


def set_num_threads(n: int) -> None:
    """Threads the kernels use (default: all online CPUs)."""
    _native.set_num_threads(n=int(n))


def get_num_threads() -> int:
    return _native.get_num_threads()


def status_string(status: int) -> str:
    return _native.status_string(status=int(status))
