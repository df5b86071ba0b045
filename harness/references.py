"""Is my loss normal? The val loss this project measured at each stage's defaults, and the lecture's.

"Measured" is the final val loss of `python stages/NN.py` at its defaults (seed 1337, tiny
Shakespeare), as `python tools/train_all.py` recorded it in docs/runs.json with its machine, torch
and date. Another CPU sums in another order and moves the third or fourth decimal, well inside NOISE.
The lecture's figures are read off the video: bands ("about 2.49"), not targets.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Any

NOISE = 0.02  # how far the final val loss moves with other seeds or another CPU
RECORD = Path(__file__).resolve().parents[1] / "docs" / "runs.json"  # written by tools/train_all.py

# (stage, preset): the lecture's figure at that stage's defaults (and preset, for stage 10)
LECTURE: dict[tuple[str, str | None], str] = {
    ("01_bigram", None): "≈ 2.49",
    ("02_position_embedding", None): "≈ 2.5",
    ("03_causal_average", None): "— (not in the lecture)",
    ("04_self_attention_head", None): "≈ 2.4",
    ("05_multi_head_attention", None): "≈ 2.28",
    ("06_feed_forward", None): "≈ 2.24",
    ("07_transformer_blocks", None): "worse than 06 (≈ 2.3)",
    ("08_residual_connections", None): "≈ 2.08",
    ("09_layer_norm", None): "≈ 2.06",
    ("10_gpt", "cpu"): "— (the lecture trains only the video preset)",
    ("10_gpt", "video"): "≈ 1.48 (video preset, GPU)",
}
# what a loss far from the reference usually means, where it means something other than the default
ABOVE = {"10_gpt": "a loss near 2.5 means the model learned only which character follows which"}
BELOW = {"01_bigram": "a lower loss than a bigram table can reach: check the data"}


@dataclasses.dataclass(frozen=True)
class Reference:
    measured: float | None  # this project's final val loss at the defaults; None: not measured
    lecture: str  # the lecture's figure, as the tables show it
    above: str = "a higher loss with the defaults usually means a change that broke something: diff the stage"
    below: str = "a loss well below it usually means the model sees the characters it must predict (the mask)"


def load_record(path: Path = RECORD) -> dict:
    """The recorded runs ({} when there is none): what tools/train_all.py wrote after a full run."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a bad merge or hand edit: the stages still run, without references
        print(f"warning: {path} cannot be read ({e}); no run is compared with it", file=sys.stderr)
        return {}


def references(record: dict) -> dict[tuple[str, str | None], Reference]:
    measured = {(stage, run.get("preset")): run["val_loss"] for stage, run in record.get("stages", {}).items()}
    meanings = {k: v for k, v in (("above", ABOVE), ("below", BELOW))}
    return {
        key: Reference(measured.get(key), lecture, **{k: m[key[0]] for k, m in meanings.items() if key[0] in m})
        for key, lecture in LECTURE.items()
    }


@functools.cache
def recorded() -> dict[tuple[str, str | None], Reference]:
    """The references of docs/runs.json, read once, at the first run that asks."""
    return references(load_record())


def lecture_figure(stage: str, preset: str | None = None) -> str:
    """The lecture's figure for a stage (at a preset, for stage 10), for tables: "≈ 2.49", or "—"."""
    return LECTURE.get((stage, preset), "—")


def judge(stage: str, preset: str | None, defaults: bool, val: float, known: dict | None = None) -> str | None:
    """One line: is this final val loss what the stage's defaults give? None for a file that is not a
    stage (a learner's copy, an exercise 4 variant). known: the references (docs/runs.json's if not given)."""
    reference = (recorded() if known is None else known).get((stage, preset))
    if reference is None:
        return None
    where = f"{stage}'s defaults" + (f" (preset {preset})" if preset else "")
    if reference.measured is None:
        what = f"the {preset} preset" if preset else f"{stage}'s defaults"
        return f"no reference for {what}: this project has not measured it (the lecture: {reference.lecture})"
    if not defaults:
        return (
            f"no reference for these settings: this project measured {reference.measured:.4f} at {where}, "
            "the only settings it knows the answer for"
        )
    gap = val - reference.measured
    if abs(gap) <= NOISE:
        lecture = reference.lecture.replace("≈", "about")
        lecture = f"; the lecture: {lecture}" if reference.lecture.startswith("≈") else ""
        return (
            f"val loss {val:.4f} is as expected: {reference.measured:.4f} at {where}, ±{NOISE} from run to run{lecture}"
        )
    meaning, side = (reference.above, "above") if gap > 0 else (reference.below, "below")
    return (
        f"val loss {val:.4f} is {abs(gap):.3f} {side} the {reference.measured:.4f} measured at {where} "
        f"(run-to-run noise: ±{NOISE}): {meaning}"
    )


def at_defaults(config: Any, config_cls: type, presets: dict | None, preset: str | None, data: Any) -> bool:
    """Whether config is the stage's defaults (with preset applied) on tiny Shakespeare."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    defaults.update((presets or {}).get(preset, {}) if preset else {})
    return data is None and dataclasses.asdict(config) == defaults
