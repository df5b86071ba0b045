"""--compile and --dtype: the same model, compiled and/or run in bfloat16, for GPUs."""

from __future__ import annotations

import argparse

import torch


class Accelerated(torch.nn.Module):
    """Calls a model under autocast and/or torch.compile. The trainer keeps the plain model, so
    checkpoints never carry compile's `_orig_mod.` prefix and load anywhere, a CPU included."""

    def __init__(self, model: torch.nn.Module, compile: bool, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.inner = torch.compile(model) if compile else model
        self.dtype, self.device_type = dtype, device_type

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.inner(idx, targets)


def accelerate(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model to train with: compiled and/or under bf16 autocast when asked, else model itself."""
    if not args.compile and args.dtype == "float32":
        return model
    return Accelerated(model, args.compile, getattr(torch, args.dtype), device.type)
