"""Compare stage 10 with variants of it: the same budget, the same seeds, a verdict against the noise.

    python exercises/compare.py stages/10_gpt.py exercises/ex4_variant.py --seeds 3
    python exercises/compare.py stages/10_gpt.py A.py B.py --seeds 3 -- --max_iters 500

The first file is the baseline; every other one is compared with it. Each file trains once per
seed at its cpu preset, changed only by the flags after --, which go to every run. The budget
(batch_size, block_size and max_iters: what a run trains on; eval_iters: how its loss is measured)
must be the baseline's, or the comparison is refused; the model, the optimizer, the rate and its
schedule are what a variant may change.

The verdict is a paired t-test on the final val loss (lower is better). A seed is the same start
and the same batches for every file, so the runs are compared seed by seed: d = variant - baseline
for each seed, and the 95% confidence interval of d's mean, mean(d) +- t * sd(d) / sqrt(n) with
Student's t for n - 1 degrees of freedom. The variant is better when the whole interval is below 0,
worse when it is above, and otherwise no difference is shown. The interval narrows with the
seeds: when d spreads by sd 0.01, 3 seeds resolve a difference of 0.025, 5 seeds 0.012 and 7
seeds 0.009; the table says how many seeds the measured spread needs to resolve 0.01.

Checkpoints and histories go to --out (checkpoints/compare/ by default), never over a stage's own;
with matplotlib, one chart of every run's val loss goes there too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import tools.machine  # noqa: E402
import tools.stages  # noqa: E402
from exercises.learner_stage import budget_of, cpu_preset_flags, load_learner_file  # noqa: E402
from exercises.paired_test import mean_and_spread, seeds_to_resolve, verdict  # noqa: E402
from tools import plot  # noqa: E402

FIRST_SEED = 1337  # the stages' default: seed 1 of a comparison is the run a learner gets


@dataclasses.dataclass
class Entry:
    """One file of the comparison: its module, the flags every run of it gets, and its results."""

    path: Path
    module: ModuleType
    flags: list[str]
    val: list[float] = dataclasses.field(default_factory=list)  # final val loss, one per seed
    histories: list[list[dict]] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def check_budgets(entries: list[Entry]) -> None:
    """Every file trains at the baseline's budget, or the comparison is refused in one line."""
    base = budget_of(entries[0].module, entries[0].flags)
    for entry in entries[1:]:
        theirs = budget_of(entry.module, entry.flags)
        differ = [k for k in sorted(set(base) | set(theirs)) if base.get(k) != theirs.get(k)]
        if differ:
            shown = ", ".join(
                f"{k} {theirs.get(k)} in {entry.name}, {base.get(k)} in {entries[0].name}" for k in differ
            )
            example = " ".join(f"--{k} {base.get(k)}" for k in differ if isinstance(base.get(k), int | float))
            raise harness.UserError(
                f"{entry.path} trains at another budget ({shown}): that is another experiment. To compare "
                f"the change alone, give both the same after --, e.g. -- {example or '--max_iters 2000'}"
            )


def train(entries: list[Entry], seeds: list[int], out: Path) -> None:
    total = len(entries) * len(seeds)
    for i, seed in enumerate(seeds):
        for j, entry in enumerate(entries):
            ckpt = out / f"{entry.name}.seed{seed}.pt"
            print(f"\n[run {i * len(entries) + j + 1} of {total}] {entry.path}, seed {seed}", flush=True)
            argv = [*entry.flags, "--seed", str(seed), "--checkpoint", str(ckpt), "--num_tokens", "1"]
            code = harness.run_main(entry.module.main, argv)
            if code != 0:
                raise harness.UserError(
                    f"the run of {entry.path} with seed {seed} stopped (exit status {code}); the runs "
                    f"finished before it are in {out}"
                )
            saved = harness.checkpoints.load(ckpt, tools.stages.stage_name(str(entry.path)))
            entry.val.append(saved.history[-1]["val_loss"])
            entry.histories.append(saved.history)


def table(entries: list[Entry], seeds: list[int]) -> str:
    width = max(len(str(e.path)) for e in entries)
    head = f"{'file':<{width}}  " + "  ".join(f"seed {s}" for s in seeds)
    lines = [head + "    mean  spread  seeds for 0.01  verdict (paired t-test)"]
    for k, entry in enumerate(entries):
        mean, spread = mean_and_spread(entry.val)
        said = "(the baseline)" if k == 0 else verdict(entries[0].val, entry.val)
        needed = "" if k == 0 or len(seeds) < 2 else str(seeds_to_resolve(entries[0].val, entry.val))
        values = "  ".join(f"{v:>9.4f}" for v in entry.val)
        lines.append(f"{str(entry.path):<{width}}  {values}  {mean:.4f}  {spread:.4f}  {needed:>14}  {said}")
    return "\n".join(lines)


def chart(entries: list[Entry], out: Path) -> str:
    """Every run's val loss against the step, one colour a file: the path of the PNG, or why none."""
    if not plot.have_matplotlib():
        return f"no chart: {plot.MATPLOTLIB_HINT}"
    figure_cls = plot.import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure_cls(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, entry in enumerate(entries):
        colour = f"C{k}"
        for n, history in enumerate(entry.histories):
            steps, val = [r["step"] for r in history], [r["val_loss"] for r in history]
            ax.plot(steps, val, color=colour, alpha=0.8, label=entry.name if n == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.set_title(f"{len(entries[0].val)} seed(s) each, the same budget")
    ax.legend()
    return f"chart: {plot.save_figure(fig, out / 'compare.png')}"


def compare_main(argv: list[str] | None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    paragraphs = __doc__.split("\n\n")
    verdict = next(p for p in paragraphs if p.startswith("The verdict"))
    parser = harness.cli.Parser(
        prog="python exercises/compare.py",
        description=paragraphs[0],
        epilog=verdict,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="the baseline first, then the variants")
    parser.add_argument("--seeds", type=harness.cli.positive(int), default=3, metavar="N", help="runs of each file")
    parser.add_argument(
        "--out",
        type=Path,
        default=harness.checkpoints.CHECKPOINT_DIR / "compare",
        metavar="DIR",
        help="where the runs' checkpoints and the chart go",
    )
    args = parser.parse_args(own)
    if len(args.files) < 2:
        raise harness.UserError("give the baseline and at least one variant: compare.py stages/10_gpt.py VARIANT.py")
    entries = []
    for path in args.files:
        module = load_learner_file(path, "give the paths of stage 10 and of your variants, e.g. exercises/ex4_mine.py")
        if not all(hasattr(module, name) for name in ("Config", "LanguageModel", "main")):
            raise harness.UserError(f"{path} is not a stage: it needs a Config, a LanguageModel and a main()")
        entries.append(Entry(path, module, cpu_preset_flags(module) + flags))
    if len({e.name for e in entries}) < len(entries):
        raise harness.UserError("two files have the same name: their checkpoints would collide; rename one")
    check_budgets(entries)
    harness.checkpoints.check_writable_dir(args.out, f"into --out {args.out}", "--out")
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    started = time.perf_counter()
    train(entries, seeds, args.out)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nthe final val loss of each run, {minutes:.1f} minutes in all on {tools.machine.machine_name()}:")
    print(table(entries, seeds))
    results = {
        "machine": tools.machine.machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "budget": budget_of(entries[0].module, entries[0].flags),
        "seeds": seeds,
        "runs": {str(e.path): e.val for e in entries},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.out / 'results.json'}")
    print(chart(entries, args.out))


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(compare_main, argv)


if __name__ == "__main__":
    sys.exit(main())
