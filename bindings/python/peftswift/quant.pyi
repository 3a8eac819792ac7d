from typing import Any, Dict, Optional, Tuple

import numpy as np

class QuantState:
    valid_quant_types: Tuple[str, ...]
    valid_qs_type_keys: list
    valid_qs_keys: list
    absmax: np.ndarray
    shape: Optional[Tuple[int, ...]]
    code: np.ndarray
    blocksize: int
    quant_type: Optional[str]
    dtype: str
    offset: Optional[np.float32]
    state2: Optional["QuantState"]
    nested: bool
    def __init__(
        self,
        absmax: np.ndarray,
        shape: Optional[Tuple[int, ...]] = ...,
        code: Optional[np.ndarray] = ...,
        blocksize: Optional[int] = ...,
        quant_type: Optional[str] = ...,
        dtype: Optional[str] = ...,
        offset: Optional[np.float32] = ...,
        state2: Optional["QuantState"] = ...,
    ) -> None: ...
    def as_dict(self, packed: bool = ...) -> Dict[str, Any]: ...
    @classmethod
    def from_dict(cls, qs_dict: Dict[str, Any], device: Any = ...) -> "QuantState": ...

def codebook(name: str) -> np.ndarray: ...
def quantize_4bit(A: Any, blocksize: int = ..., quant_type: str = ..., compress_statistics: bool = ...,
                  quant_storage: Any = ..., absmax: Optional[np.ndarray] = ..., out: Optional[np.ndarray] = ...) -> Tuple[Any, QuantState]: ...
def dequantize_4bit(A: Any, quant_state: Optional[QuantState] = ..., absmax: Any = ..., out: Optional[np.ndarray] = ...,
                    blocksize: int = ..., quant_type: str = ...) -> Any: ...
def quantize_blockwise(A: Any, code: Any = ..., absmax: Optional[np.ndarray] = ..., out: Optional[np.ndarray] = ...,
                       blocksize: int = ..., nested: bool = ...) -> Tuple[np.ndarray, QuantState]: ...
def dequantize_blockwise(A: Any, quant_state: Optional[QuantState] = ..., absmax: Any = ..., code: Any = ...,
                         out: Optional[np.ndarray] = ..., blocksize: int = ..., nested: bool = ...) -> np.ndarray: ...
