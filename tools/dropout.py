"""What dropout is for, seen on a CPU: stage 10 on a text small enough to memorise, with and without it.

    python tools/dropout.py                       the two runs, then their curves side by side
    python tools/dropout.py --chars 20000 --max_iters 400      a quicker, smaller look

Stage 10 trains at its cpu preset on the first --chars characters, split 90/10 as every stage
splits its text, once with --dropout 0 and once at the preset's rate; docs/stages/10_gpt.md says
why and shows what it measured. Both runs go to --out (checkpoints/dropout/ by default), never over
stage 10's own checkpoint. The chart (dropout.png, in --out) needs matplotlib; without it the runs
and the table at the end are the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import tools.stages  # noqa: E402
from tools import plot  # noqa: E402

CHARS = 50_000  # the slice: 45,000 characters to train on, read about 45 times in 1,000 steps
MAX_ITERS = 1000
EVAL_INTERVAL = 100


def run_one(stage, rate: float, text: Path, out: Path, max_iters: int, device: str) -> list[dict]:
    """Stage 10 at its cpu preset on text with dropout at rate: its loss history."""
    ckpt = out / f"dropout_{rate:g}.pt"
    argv = ["--preset", "cpu", "--data", str(text), "--dropout", str(rate), "--checkpoint", str(ckpt)]
    argv += ["--max_iters", str(max_iters), "--eval_interval", str(EVAL_INTERVAL), "--device", device]
    print(f"\nstage 10, dropout {rate:g}: python stages/10_gpt.py {' '.join(argv)}", flush=True)
    code = harness.run_main(stage.main, argv)
    if code != 0:
        raise harness.UserError(f"the run with dropout {rate:g} stopped (exit status {code}); its checkpoint is {ckpt}")
    return harness.checkpoints.load(ckpt, tools.stages.stage_name(stage.__file__)).history


def table(histories: dict[float, list[dict]]) -> str:
    rates = list(histories)
    head = "  ".join(f"{'dropout ' + format(r, 'g'):>26}" for r in rates)
    lines = [f"{'':>6}  {head}", f"{'step':>6}  " + "  ".join(f"{'train':>8}{'val':>9}{'gap':>9}" for _ in rates)]
    for rows in zip(*histories.values(), strict=True):
        cells = "  ".join(
            f"{r['train_loss']:>8.4f}{r['val_loss']:>9.4f}{r['val_loss'] - r['train_loss']:>9.4f}" for r in rows
        )
        lines.append(f"{rows[0]['step']:>6}  {cells}")
    return "\n".join(lines)


def chart(histories: dict[float, list[dict]], chars: int, out: Path) -> str:
    """Train and val loss against the step, one panel a rate, on the same axes: the PNG's path, or why none."""
    if not plot.have_matplotlib():
        return f"no chart: {plot.MATPLOTLIB_HINT}"
    fig = plot.new_figure(figsize=(10, 4.2), dpi=110)
    axes = fig.subplots(1, len(histories), sharey=True, squeeze=False)[0]
    for ax, (rate, history) in zip(axes, histories.items(), strict=True):
        steps = [r["step"] for r in history]
        ax.plot(steps, [r["train_loss"] for r in history], label="train")
        ax.plot(steps, [r["val_loss"] for r in history], label="val")
        ax.set_title(f"dropout {rate:g}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    fig.suptitle(f"stage 10, cpu preset, on the first {chars:,} characters of tiny Shakespeare")
    return f"chart: {plot.save_figure(fig, out / 'dropout.png')}"


def dropout_main(argv: list[str] | None) -> None:
    parser = harness.cli.Parser(
        prog="python tools/dropout.py",
        description=__doc__.split("\n\n")[0] + " The chart needs matplotlib (pip install matplotlib).",
    )
    parser.add_argument(
        "--chars", type=harness.cli.positive(int), default=CHARS, help=f"the slice's length (default: {CHARS:,})"
    )
    parser.add_argument(
        "--max_iters", type=harness.cli.positive(int), default=MAX_ITERS, help=f"steps a run (default: {MAX_ITERS})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=harness.checkpoints.CHECKPOINT_DIR / "dropout",
        metavar="DIR",
        help="where the slice, the runs and the chart go (default: checkpoints/dropout)",
    )
    parser.add_argument("--data", type=Path, help="slice this UTF-8 text instead of tiny Shakespeare")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="where to compute")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    stage = tools.stages.load_stage("10")
    rate = stage.PRESETS["cpu"]["dropout"]
    text, source = harness.cli.load_text(args.data)
    if len(text) < args.chars:
        raise harness.UserError(f"{source} has {len(text):,} characters, fewer than --chars {args.chars:,}")
    harness.checkpoints.check_writable_dir(args.out, f"into --out {args.out}", "--out")
    sliced = args.out / "slice.txt"
    piece = text[: args.chars].encode("utf-8")
    harness.checkpoints.write_atomically(sliced, lambda f: f.write(piece))
    histories = {r: run_one(stage, r, sliced, args.out, args.max_iters, args.device) for r in (0.0, rate)}
    print(f"\ntrain and val loss on the first {args.chars:,} characters of {source.name} (gap: val - train):")
    print(table(histories))
    print(chart(histories, args.chars, args.out))


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(dropout_main, argv)


if __name__ == "__main__":
    sys.exit(main())
