"""Measure the band the stage check weighs a learner's short run against: python exercises/stage_band.py

Trains the project's own stages 02 to 10 at the check's short budget (exercises/checks/stage.py),
once for each seed, and records every val loss, with this machine and the date, in
benchmarks/results.json. `python exercises/check.py stage NN` reads them from there.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import harness  # noqa: E402
import harness.cli  # noqa: E402
import tools.machine  # noqa: E402
from exercises.checks import stage  # noqa: E402


def measure(numbers: list[int], seeds: list[int]) -> None:
    """Each stage's val loss for each seed, recorded as soon as the stage is done."""
    for number in numbers:
        name = f"{number:02d}"
        losses = [round(stage.short_run(stage.reference(number), number, s).val_loss, 4) for s in seeds]
        print(f"stage {name}: val {losses}", flush=True)
        record({name: losses}, seeds)


def record(losses: dict, seeds: list[int]) -> None:
    """Replace the band's entry in benchmarks/results.json, keeping the stages not measured this time."""
    results = json.loads(stage.RESULTS.read_text(encoding="utf-8"))
    old = next((r for r in results["results"] if r["figure"] == stage.BAND_FIGURE), None)
    entry = {
        "figure": stage.BAND_FIGURE,
        "command": "python exercises/stage_band.py",
        "steps": {f"{n:02d}": s for n, s in stage.STEPS.items()},
        "eval_iters": stage.EVAL_ITERS,
        "sizes": "each stage's own Config (stage 10: its cpu preset), on tiny Shakespeare, --device cpu",
        "seeds": seeds,
        "val_loss": {**(old or {}).get("val_loss", {}), **losses},
        "band": f"the mean + {stage.SPREADS} standard deviations across seeds",
        "machine": tools.machine.machine_name(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "measured": "losses only, no times",
    }
    results["results"] = [r for r in results["results"] if r is not old] + [entry]
    stage.RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def band_main(argv: list[str] | None) -> None:
    parser = harness.cli.Parser(prog="python exercises/stage_band.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=list(stage.NUMBERS), help="default: 2 to 10")
    at_least_2 = harness.cli.checked(int, lambda n: n >= 2, "must be 2 or more: a band needs a spread")
    parser.add_argument("--seeds", type=at_least_2, default=10, help="how many seeds, from 0 (default 10)")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    measure(args.stages, seeds)
    print(f"recorded in {stage.RESULTS}")


if __name__ == "__main__":
    sys.exit(harness.run_main(band_main))
