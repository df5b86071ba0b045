"""What a checkpoint holds, and putting a run back where it stood.

Besides the weights: the hyperparameters, the vocabulary, the step, the optimizer's state, the
loss history, the training time so far and every random-number state, so that --resume continues
exactly where the run stopped (bit for bit on a CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from harness.checkpoints import CHECKPOINT_FORMAT, plain_state_dict


def take(
    run: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, history: list, elapsed: float
) -> dict:
    """The checkpoint's contents for a run at this step."""
    return {
        "format": CHECKPOINT_FORMAT,
        "stage": run.stage,
        "config": dataclasses.asdict(run.config),
        "vocab": run.tokenizer.chars,
        "step": step,
        "model": plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "elapsed": elapsed,
        "rng": {
            "batches": run.train_gen.get_state(),
            "eval": run.eval_gen.get_state(),
            "torch": torch.get_rng_state(),  # dropout's random numbers on the CPU ...
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # ... and on GPUs
        },
    }


def restore_training(run: Any, optimizer: torch.optim.Optimizer) -> None:
    """--resume: the optimizer's state and every random-number generator, as they were saved."""
    ckpt = run.checkpoint
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:  # the optimizer state brings the old rate back:
        group["lr"] = run.config.learning_rate  # --learning_rate (or the checkpoint's) wins
    run.train_gen.set_state(ckpt["rng"]["batches"])
    run.eval_gen.set_state(ckpt["rng"]["eval"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    cuda_states = ckpt["rng"].get("cuda", [])
    if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
