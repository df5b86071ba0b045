"""The training loop of the exercises' own programs, written once: stage 10's loop, at the rate
exercises/schedule.py gives each step (warm-up and cosine decay with lr_decay, else constant).

Exercise 2's addition and exercise 3's pre-training train stage 10's model on data of their own;
check.py 2 trains it without a Trainer. All three import these two functions, so that a fix to the
loop is made once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

import harness
from exercises.schedule import learning_rate_at


def train_step(model, optimizer, cfg, step: int, xb: torch.Tensor, yb: torch.Tensor, autocast=None) -> torch.Tensor:
    """One optimizer step on inputs xb (B, T) and targets yb (B, T) at the schedule's rate: the loss.
    autocast: the context of the forward pass (a Trainer's autocast() under --dtype bfloat16)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, cfg)
    with autocast or contextlib.nullcontext():
        _, loss = model(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train(
    trainer: harness.Trainer,
    model,
    optimizer,
    cfg,
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    estimate: Callable[[], dict[str, float]],
    after_estimate: Callable[[int], None] | None = None,
) -> None:
    """The Trainer's steps (progress, Ctrl-C, --resume): a loss estimate every eval_interval steps and
    at the last, then after_estimate(step); a batch from batch() and one train_step each step."""
    for step in trainer.steps():
        if step % cfg.eval_interval == 0 or step == cfg.max_iters - 1:
            trainer.log_estimate(step, estimate())
            if after_estimate is not None:
                after_estimate(step)
        trainer.count_step(train_step(model, optimizer, cfg, step, *batch(), trainer.autocast()))
