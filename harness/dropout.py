"""Dropout's masks, drawn faster on a CPU: the stage's own nn.Dropout, the same rule, cheaper random numbers.

nn.Dropout draws one random number for each activation. On a CPU, PyTorch draws them one by one
from a single generator (in parallel only on Intel CPUs, through MKL). At stage 10's cpu preset
that is a large part of a training step: docs/performance.md has the breakdown.

quick_masks() gives each nn.Dropout in a model a forward that draws 64 random bits at once and
cuts them into four 16-bit numbers, one for each activation. The rule stays nn.Dropout's:

- in training, each activation is zeroed with probability p, and the kept ones are scaled by
  1 / (1 - p), so that the mean stays the same; in eval mode, nothing changes;
- p is rounded to a multiple of 1/65536 (0.1 becomes 0.100006), and the scale uses the rounded p;
- the bits come from torch's default generator, as nn.Dropout's do: a seed gives the same run again,
  and a checkpoint's saved generator state resumes it.

--dropout_masks torch keeps nn.Dropout's own masks (slower on a CPU, the same rule).
"""

from __future__ import annotations

import torch
from torch import nn

LANES = 4  # 16-bit numbers cut from one 64-bit draw
LEVELS = 2**16  # the values a 16-bit number takes


class QuickDropout(nn.Dropout):
    """nn.Dropout, with its mask made from 16-bit random numbers drawn four at a time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        cut = round(self.p * LEVELS)  # a 16-bit number below cut zeroes its activation
        if cut == LEVELS:  # p rounds to 1: everything is zeroed, as nn.Dropout(1.0) does
            return x.mul_(0) if self.inplace else x * 0
        draws = torch.empty((x.numel() + LANES - 1) // LANES, dtype=torch.int64, device=x.device)
        draws.random_(-(2**63), None)  # every 64-bit pattern equally likely
        # The same bytes read as int16: four numbers, each uniform over -32768..32767.
        numbers = draws.view(torch.int16)[: x.numel()].view(x.shape)
        keep = numbers >= cut - LEVELS // 2  # True with probability 1 - cut / LEVELS
        # 0 or 1 / (1 - p), with p rounded as cut has it: the kept are scaled, and the mean stays
        mask = keep.to(x.dtype).mul_(LEVELS / (LEVELS - cut))
        return x.mul_(mask) if self.inplace else x * mask  # one multiplication, and one in backward


def quick_masks(model: nn.Module) -> int:
    """Replace each nn.Dropout in model with a QuickDropout of the same p; returns how many."""
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:  # exactly nn.Dropout: not a subclass with a rule of its own
                quick = QuickDropout(child.p, child.inplace).train(child.training)
                setattr(parent, name, quick)
                replaced += 1
    return replaced
