from typing import Optional

import torch

class ConvertReport:
    converted: list[str]
    left: dict[str, str]

def convert(model: torch.nn.Module) -> ConvertReport: ...
def unconvert(model: torch.nn.Module) -> int: ...
def is_converted(module: torch.nn.Module) -> bool: ...
def lora_linear(x: torch.Tensor, x_lora: Optional[torch.Tensor], lora_a: Optional[torch.Tensor],
                lora_b: Optional[torch.Tensor], bias: Optional[torch.Tensor], scaling: float,
                base_module: torch.nn.Module) -> torch.Tensor: ...
