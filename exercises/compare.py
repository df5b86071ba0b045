"""Compare stage 10 with variants of it: the same budget, the same seeds, a verdict against the noise.

    python exercises/compare.py stages/10_gpt.py exercises/ex4_variant.py --seeds 3
    python exercises/compare.py stages/10_gpt.py A.py B.py --seeds 3 -- --max_iters 500

The first file is the baseline; every other one is compared with it. Each file trains once per
seed, all at the same budget: stage 10's cpu preset (wherever the file takes its presets from),
changed only by the flags after --, which go to every run. Two files whose budgets differ (the
training part of the Config: batch_size, block_size, max_iters, the learning rate and its
schedule, eval_interval, eval_iters) are refused: a variant that changes its learning rate is
another experiment, to be run as one by giving that rate to both after --.

The verdict, on the final val loss (lower is better): a variant is better, or worse, when the
difference of the means is larger than the larger spread (max - min over the seeds) of the two;
otherwise it is no better than the noise. Checkpoints and histories go to --out
(checkpoints/compare/ by default), never over a stage's own; with matplotlib, one chart of every
run's val loss goes there too.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.files  # noqa: E402
import harness.machine  # noqa: E402
import harness.stages  # noqa: E402
from exercises.runner import budget_of, cpu_preset_flags, load_learner_file  # noqa: E402
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


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), max(values) - min(values)


def verdict(base: list[float], other: list[float]) -> str:
    """The rule in this module's docstring, in one phrase."""
    if len(base) < 2 or len(other) < 2:
        return "one seed: no noise to weigh the difference against (use --seeds 3)"
    (base_mean, base_spread), (mean, spread) = mean_and_spread(base), mean_and_spread(other)
    difference, noise = mean - base_mean, max(base_spread, spread)
    if difference < -noise:
        return f"better: {-difference:.4f} lower, more than the noise ({noise:.4f})"
    if difference > noise:
        return f"worse: {difference:.4f} higher, more than the noise ({noise:.4f})"
    return f"no better than the noise: {difference:+.4f}, within the noise ({noise:.4f})"


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
            saved = harness.checkpoints.load(ckpt, harness.stages.stage_name(str(entry.path)))
            entry.val.append(saved.history[-1]["val_loss"])
            entry.histories.append(saved.history)


def table(entries: list[Entry], seeds: list[int]) -> str:
    width = max(len(str(e.path)) for e in entries)
    lines = [f"{'file':<{width}}  " + "  ".join(f"seed {s}" for s in seeds) + "    mean  spread  verdict"]
    for k, entry in enumerate(entries):
        mean, spread = mean_and_spread(entry.val)
        said = "(the baseline)" if k == 0 else verdict(entries[0].val, entry.val)
        values = "  ".join(f"{v:>9.4f}" for v in entry.val)
        lines.append(f"{str(entry.path):<{width}}  {values}  {mean:.4f}  {spread:.4f}  {said}")
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
    parser = harness.cli.Parser(
        prog="python exercises/compare.py", description=__doc__.split("\n\n")[0], allow_abbrev=False
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
        module = load_learner_file(path)
        if not all(hasattr(module, name) for name in ("Config", "LanguageModel", "main")):
            raise harness.UserError(f"{path} is not a stage: it needs a Config, a LanguageModel and a main()")
        entries.append(Entry(path, module, cpu_preset_flags(module) + flags))
    if len({e.name for e in entries}) < len(entries):
        raise harness.UserError("two files have the same name: their checkpoints would collide; rename one")
    check_budgets(entries)
    harness.files.check_writable_dir(args.out, f"into --out {args.out}", "--out")
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    started = time.perf_counter()
    train(entries, seeds, args.out)
    minutes = (time.perf_counter() - started) / 60
    print(f"\nthe final val loss of each run, {minutes:.1f} minutes in all on {harness.machine.machine_name()}:")
    print(table(entries, seeds))
    results = {
        "machine": harness.machine.machine_name(),
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
