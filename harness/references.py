"""What a stage's val loss should be: the figure this project measured at the stage's defaults, and
the lecture's. The stages' closing lines and tools/train_all.py's table read them from here.

"Measured" is the final val loss of `python stages/NN.py` at its defaults (seed 1337, tiny
Shakespeare), as tools/train_all.py recorded it on an AMD EPYC with 2 cores, torch 2.13.0 on the CPU.
The same machine and torch give the same run, loss for loss; another CPU sums in another order and
moves the fourth decimal (stage 09: 2.0604 here, 2.0582 on another machine of the same kind), well
inside the band below. The lecture's figures are read off the video, so they are bands ("about
2.49"), not targets; stage 10's belongs to its video preset only, as the lecture trains no other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

NOISE = 0.02  # how far the final val loss moves with other seeds or another CPU (measured: ±0.02)

LEARNED_BIGRAMS = "a loss near 2.5 means the model learned only which character follows which"
FUTURE = "a loss well below it usually means the model sees the characters it must predict (the mask)"


@dataclasses.dataclass(frozen=True)
class Reference:
    measured: float | None  # this project's final val loss at the defaults; None: not measured
    lecture: str  # the lecture's figure, as the README's table shows it
    above: str = "a higher loss with the defaults usually means a change that broke something: diff the stage"
    below: str = FUTURE


REFERENCES: dict[tuple[str, str | None], Reference] = {
    # (stage, preset): the reference for that stage's defaults (and that preset, for stage 10)
    ("01_bigram", None): Reference(
        2.4874, "≈ 2.49", below="a lower loss than a bigram table can reach: check the data"
    ),
    ("02_position_embedding", None): Reference(2.5125, "≈ 2.5"),
    ("03_causal_average", None): Reference(2.8208, "— (not in the lecture)"),
    ("04_self_attention_head", None): Reference(2.4031, "≈ 2.4"),
    ("05_multi_head_attention", None): Reference(2.2703, "≈ 2.28"),
    ("06_feed_forward", None): Reference(2.2461, "≈ 2.24"),
    ("07_transformer_blocks", None): Reference(2.3471, "worse than 06 (≈ 2.3)"),
    ("08_residual_connections", None): Reference(2.0844, "≈ 2.08"),
    ("09_layer_norm", None): Reference(2.0683, "≈ 2.06"),
    ("10_gpt", "cpu"): Reference(1.7202, "— (the lecture trains only the video preset)", above=LEARNED_BIGRAMS),
    ("10_gpt", "video"): Reference(None, "≈ 1.48 (video preset, GPU)"),
}


def lecture_figure(stage: str, preset: str | None = None) -> str:
    """The lecture's figure for a stage (at a preset, for stage 10), for tables: "≈ 2.49", or "—"."""
    reference = REFERENCES.get((stage, preset))
    return reference.lecture if reference else "—"


def judge(stage: str, preset: str | None, defaults: bool, val: float) -> str | None:
    """One line: is this run's final val loss what the stage's defaults give? None for a file that is
    not one of the stages (a learner's copy, an exercise 4 variant). Exercise 1 trains as stage 10, with
    the learner's attention, so stage 10's reference is the one its answer should meet."""
    reference = REFERENCES.get((stage, preset))
    if reference is None:
        return None
    if reference.measured is None:
        return (
            f"no reference for the {preset} preset: this project has not measured it (the lecture: {reference.lecture})"
        )
    where = f"{stage}'s defaults" + (f" (preset {preset})" if preset else "")
    if not defaults:
        return (
            f"no reference for these settings: this project measured {reference.measured:.4f} at {where}, "
            "the only settings it knows the answer for"
        )
    gap = val - reference.measured
    if abs(gap) <= NOISE:
        lecture = (
            f"; the lecture: {reference.lecture.replace('≈', 'about')}" if reference.lecture.startswith("≈") else ""
        )
        return (
            f"val loss {val:.4f} is as expected: {reference.measured:.4f} at {where}, ±{NOISE} from run to run{lecture}"
        )
    meaning = reference.above if gap > 0 else reference.below
    return (
        f"val loss {val:.4f} is {abs(gap):.3f} {'above' if gap > 0 else 'below'} the {reference.measured:.4f} measured "
        f"at {where} (run-to-run noise: ±{NOISE}): {meaning}"
    )


def at_defaults(config: Any, config_cls: type, presets: dict | None, preset: str | None, data: Any) -> bool:
    """Whether config is the stage's defaults (with preset applied) on tiny Shakespeare."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    defaults.update((presets or {}).get(preset, {}) if preset else {})
    return data is None and dataclasses.asdict(config) == defaults
