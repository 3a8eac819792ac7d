from typing import Any, Optional, Tuple, Union

import numpy as np

from . import files as files
from . import llm as llm
from .files import load_adapter as load_adapter
from .files import load_bnb_checkpoint as load_bnb_checkpoint
from .files import save_adapter as save_adapter
from .files import save_bnb_checkpoint as save_bnb_checkpoint
from .lora import LoraLinear as LoraLinear
from .optim import AdamW as AdamW
from .optim import PagedBuffer as PagedBuffer
from .optim import Pager as Pager
from .optim import lr_multiplier as lr_multiplier
from .quant import QuantState as QuantState

__version__: str
ABI_VERSION: int

class Error(Exception):
    status: int

class InvalidArgumentError(Error, ValueError): ...
class OutOfMemoryError(Error, MemoryError): ...
class ShapeError(Error, ValueError): ...
class UnsupportedError(Error, NotImplementedError): ...
class UnsupportedCPUError(Error, RuntimeError): ...
class MisuseError(Error, RuntimeError): ...
class IOError(Error, OSError): ...
class CorruptDataError(Error, ValueError): ...
class NotFoundError(Error, KeyError): ...
class ExistsError(Error, ValueError): ...
class NonFiniteError(Error, ValueError): ...
class InternalError(Error, RuntimeError): ...

ArrayLike = Any  # numpy array, ml_dtypes bfloat16 array or CPU torch tensor

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_isa(name: str) -> None: ...
def get_isa() -> str: ...
def host_isa() -> str: ...
def status_string(status: int) -> str: ...
def codebook(name: str) -> np.ndarray: ...
def quantize_4bit(
    A: ArrayLike,
    blocksize: int = ...,
    quant_type: str = ...,
    compress_statistics: bool = ...,
    quant_storage: Any = ...,
    absmax: Optional[np.ndarray] = ...,
    out: Optional[np.ndarray] = ...,
) -> Tuple[Any, QuantState]: ...
def dequantize_4bit(
    A: ArrayLike,
    quant_state: Optional[QuantState] = ...,
    absmax: Optional[ArrayLike] = ...,
    out: Optional[np.ndarray] = ...,
    blocksize: int = ...,
    quant_type: str = ...,
) -> Any: ...
def quantize_blockwise(
    A: ArrayLike,
    code: Optional[ArrayLike] = ...,
    absmax: Optional[np.ndarray] = ...,
    out: Optional[np.ndarray] = ...,
    blocksize: int = ...,
    nested: bool = ...,
) -> Tuple[np.ndarray, QuantState]: ...
def dequantize_blockwise(
    A: ArrayLike,
    quant_state: Optional[QuantState] = ...,
    absmax: Optional[ArrayLike] = ...,
    code: Optional[ArrayLike] = ...,
    out: Optional[np.ndarray] = ...,
    blocksize: int = ...,
    nested: bool = ...,
) -> np.ndarray: ...
