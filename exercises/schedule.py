"""nanoGPT's learning-rate schedule: a warm-up, then half a cosine down to a tenth of the rate.

Not the lecture's: its loop keeps the rate constant, and so does every stage. Exercise 4's worked
solution exercises/solutions/ex4_lr_schedule.py brings it to stage 10 and measures it against the
noise; the exercises' own programs (the addition of exercise 2, the pre-training of exercise 3)
train with it.

How the rate moves with lr_decay:
  steps 0 .. warmup_iters - 1   a line up, from learning_rate / warmup_iters to learning_rate
  then, up to max_iters         half a cosine, from learning_rate down to a tenth of it
Without lr_decay it stays at learning_rate.
"""

import math
from dataclasses import dataclass, field


@dataclass
class Schedule:
    """The schedule's two hyperparameters, for a Config to take on (each is a flag too)."""

    lr_decay: bool = False  # warm up, then decay along a cosine to a tenth at max_iters
    warmup_iters: int = field(default=100, metadata={"min": 0})  # warm-up steps, with --lr_decay


def learning_rate_at(step: int, cfg) -> float:
    """The step size for this step: cfg.learning_rate, or with cfg.lr_decay the schedule above."""
    if not cfg.lr_decay:
        return cfg.learning_rate
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    decay_steps = max(1, cfg.max_iters - cfg.warmup_iters)
    progress = min(1.0, (step - cfg.warmup_iters) / decay_steps)  # 0 -> 1 over the rest
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
