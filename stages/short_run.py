"""Stage 10 in minutes on a CPU: the "cpu" preset and the learning-rate schedule it turns on.

Not part of the lecture, and not a stage: stage 10 imports it, so that its diff against stage 09
shows dropout and the scale-up alone. The lecture's configuration (10.8 million parameters) takes
9 to 15 s a step on a 2-core CPU, so without cuda or mps stage 10 trains the same architecture
smaller, for 2000 steps, with a rate that warms up and then decays (measured by
benchmarks/tune_stage10.py on a 2-core AMD EPYC: val 1.5777 in 245 s, against 1.6288 for the
best constant rate).

How the rate moves with lr_decay (nanoGPT's schedule):
  steps 0 .. warmup_iters - 1   a line up, from learning_rate / warmup_iters to learning_rate
  then, up to max_iters         half a cosine, from learning_rate down to a tenth of it
Without lr_decay (the lecture's loop, and the "video" preset) it stays at learning_rate.
"""

import math
from dataclasses import dataclass, field

# The presets stage 10 offers (--preset): "video" leaves its Config as it is, the lecture's; "cpu"
# keeps the architecture and shrinks it to minutes on 2 cores. Without --preset, stage 10 takes
# the preset named after its device ("cpu"), else the first one.
PRESETS = {
    "video": {},
    "cpu": dict(
        batch_size=32,
        block_size=64,
        max_iters=2000,
        eval_interval=250,
        learning_rate=3e-3,
        lr_decay=True,
        eval_iters=20,
        n_embd=128,
        n_head=4,
        n_layer=4,
        dropout=0.0,
    ),
}


@dataclass
class Schedule:
    """The schedule's two hyperparameters, which stage 10's Config takes on (each is a flag too)."""

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
