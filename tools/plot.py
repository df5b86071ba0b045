"""Plot the loss curves that the stages wrote beside their checkpoints.

    python tools/plot.py                 every stage with a history, on one chart: checkpoints/curves.png
    python tools/plot.py 9               one stage, train and val: checkpoints/09_layer_norm.png
    python tools/plot.py 01 05 09_layer_norm --out compare.png

Each training run writes `<stage>.history.csv` (step, train_loss, val_loss, elapsed_s) next to its
checkpoint; this reads those files and nothing else, so it works while other stages still train.
It needs matplotlib, which training does not: `pip install matplotlib`, or `pip install -r
requirements-dev.txt` for every tool. It is imported only when a chart is drawn, so this module (and
its stage-name helpers) imports without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.errors  # noqa: E402
import tools.stages  # noqa: E402

MATPLOTLIB_HINT = (
    "charts need matplotlib, which training does not: pip install matplotlib (or pip install -r requirements-dev.txt)"
)


def history_file(checkpoint_dir: Path, stage: str) -> Path:
    return harness.checkpoints.history_path(checkpoint_dir / f"{stage}.pt")


def load_histories(stages: list[str], checkpoint_dir: Path) -> dict[str, list[dict[str, float]]]:
    """Each stage's loss history; a stage without one is an error that says how to make it."""
    histories = {}
    for stage in stages:
        path = history_file(checkpoint_dir, stage)
        rows = harness.checkpoints.read_history(path)
        if not rows:
            state = "is empty or not a loss history" if path.exists() else "does not exist"
            raise harness.UserError(
                f"no loss history for {stage} in {checkpoint_dir} ({path} {state}); train it first with "
                f"`python stages/{stage}.py --checkpoint {checkpoint_dir / (stage + '.pt')}`, "
                "or point --checkpoints at its folder"
            )
        histories[stage] = rows
    return histories


def stages_with_history(checkpoint_dir: Path) -> list[str]:
    stages = tools.stages.stage_names()
    return [s for s in stages if harness.checkpoints.read_history(history_file(checkpoint_dir, s))]


# ----------------------------------------------------------------------------------------------
# the chart


def import_matplotlib() -> Any:
    """matplotlib's Figure class; a UserError with the install command when matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401 (the package itself first: it is what a user lacks, and a None in sys.modules stops here)
        from matplotlib.figure import Figure
    except ImportError:
        raise harness.UserError(MATPLOTLIB_HINT) from None
    return Figure


def new_figure(figsize: tuple[float, float], dpi: int) -> Any:
    """A matplotlib Figure on the Agg canvas, not pyplot's: no global backend switch, no window, and no figure
    left open in a notebook that imports this. A UserError with the install command when matplotlib is absent."""
    figure_cls = import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure_cls(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def have_matplotlib() -> bool:
    try:
        import_matplotlib()
    except harness.UserError:
        return False
    return True


def plot_histories(histories: dict[str, list[dict[str, float]]], out: Path) -> Path:
    """Draw the curves to out (a PNG unless its suffix names another format matplotlib writes).

    One stage: its train (dashed) and val (solid) loss. Several: every stage's val (solid) and
    train (dashed, thinner, same colour) on one chart.
    """
    fig = new_figure(figsize=(10, 6), dpi=110)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    if len(histories) == 1:
        ((stage, rows),) = histories.items()
        for split, style, colour in (("train", "--", "tab:blue"), ("val", "-", "tab:orange")):
            losses = [r[f"{split}_loss"] for r in rows]
            label = f"{split} (last {losses[-1]:.4f})"
            ax.plot([r["step"] for r in rows], losses, style, color=colour, label=label)
        ax.set_title(f"{stage}: loss during training")
        ax.legend(loc="upper right")
    else:
        for i, (stage, rows) in enumerate(histories.items()):
            colour = f"C{i % 10}"  # the default cycle: ten distinct colours, one per stage
            steps, val = [r["step"] for r in rows], [r["val_loss"] for r in rows]
            ax.plot(steps, val, "-", color=colour, linewidth=1.8, label=f"{stage} ({val[-1]:.3f})")
            ax.plot(steps, [r["train_loss"] for r in rows], "--", color=colour, linewidth=0.9)
        ax.set_title(f"loss during training, {len(histories)} stages")
        # the key to the line styles, then one entry per stage; outside the axes so no curve is hidden
        style = [
            Line2D([], [], color="0.3", linestyle="-", label="val (last value)"),
            Line2D([], [], color="0.3", linestyle="--", label="train"),
        ]
        handles = style + ax.get_legend_handles_labels()[0]
        fig.legend(handles=handles, loc="outside right upper", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, even in a 20-step run
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per character)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, out)


def save_figure(fig: Any, out: Path) -> Path:
    """Write a matplotlib Figure to out, in the format its suffix names (PNG without one); a name
    matplotlib cannot write, a file where its folder should be, or a failed write is one clear error."""
    suffix = out.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if suffix and suffix not in supported:
        raise harness.UserError(
            f"--out {out}: matplotlib cannot write .{suffix} files; "
            f"end the name in .png (or {', '.join('.' + s for s in sorted(supported))})"
        )
    if out.parent.exists() and not out.parent.is_dir():
        raise harness.UserError(
            f"cannot write {out}: {out.parent} is a file, not a folder; choose another place with --out"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format=suffix or "png")
    except OSError as e:
        raise harness.UserError(f"cannot write {out} ({e.strerror or e}); choose another place with --out") from None
    return out


# ----------------------------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog="python tools/plot.py",
        description="Plot the train and val loss curves of one stage, or compare several stages on one chart. "
        "Needs matplotlib: pip install matplotlib (or pip install -r requirements-dev.txt).",
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "stages",
        nargs="*",
        metavar="STAGE",
        help='a stage number ("9", "09") or name ("09_layer_norm", "layer_norm"); '
        "none: every stage that has a history in --checkpoints",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=harness.checkpoints.CHECKPOINT_DIR,
        metavar="DIR",
        help="the folder with the <stage>.history.csv files",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PNG",
        help="the image to write (default: DIR/<stage>.png for one stage, DIR/curves.png for several)",
    )
    return parser


def plot_main(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    import_matplotlib()  # missing, it is the first thing to say: the histories can wait
    if args.stages:
        stages = list(dict.fromkeys(tools.stages.resolve_stage(s) for s in args.stages))  # "9 09" is one stage
    else:
        stages = stages_with_history(args.checkpoints)
        if not stages:
            raise harness.UserError(
                f"no loss histories in {args.checkpoints}; train a stage first (python stages/01_bigram.py) "
                "or point --checkpoints at the folder with the <stage>.history.csv files"
            )
    histories = load_histories(stages, args.checkpoints)
    out = args.out or args.checkpoints / (f"{stages[0]}.png" if len(stages) == 1 else "curves.png")
    print(plot_histories(histories, out))


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(plot_main, argv)


if __name__ == "__main__":
    sys.exit(main())
