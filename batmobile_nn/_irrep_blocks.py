"""The output row of a per-irrep-block module (``o3.Linear``, ``nn.ElementLinear``) from its blocks.

TorchScript compiles these with the modules that call them (type annotations required).
"""

from typing import List, Optional

import torch
from torch import Tensor


def add_block(outs: List[Optional[Tensor]], i_out: int, block: Tensor) -> None:
    """``outs[i_out] += block`` (instructions into the same output irrep add up)."""
    previous = outs[i_out]
    outs[i_out] = block if previous is None else previous + block


def concat_blocks(outs: List[Optional[Tensor]], out_blocks: List[List[int]], like: Tensor) -> Tensor:
    """``[n, sum(mul * d)]`` from the blocks ``outs[i] [n, mul, d]`` (``out_blocks[i] = [mul, d]``); zeros for an
    output no instruction reaches."""
    n = like.shape[0]
    blocks: List[Tensor] = []
    for i, (mul, d) in enumerate(out_blocks):
        block = outs[i]
        blocks.append(like.new_zeros(n, mul * d) if block is None else block.reshape(n, mul * d))
    if len(blocks) == 0:  # no output irreps
        return like.new_zeros(n, 0)
    return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]
