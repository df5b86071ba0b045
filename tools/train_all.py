"""Train every stage one after another and write the results table into the README.

    python tools/train_all.py                          every stage at its defaults
    python tools/train_all.py --quick                  500 steps each: a first look in a fraction of the time
    python tools/train_all.py --stages 01,09 -- --device cpu --seed 1

Each stage runs as its own process, exactly as a user would type it, with --checkpoint DIR/<stage>.pt;
flags after `--` go to every stage. The results come from what the stages leave behind: the
parameter count from their output, the losses from the last row of `<stage>.history.csv`, the
sample from `<stage>.sample.txt`. They are written to DIR/results.json, between the README's
`<!-- results:start -->` and `<!-- results:end -->` markers (and, when it has them, a few characters
of each sample between `<!-- samples:start -->` and `<!-- samples:end -->`), and, when matplotlib is
installed, drawn to DIR/curves.png.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import common  # noqa: E402
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.errors  # noqa: E402
import harness.files  # noqa: E402
import harness.machine  # noqa: E402
import harness.references  # noqa: E402
import harness.stages  # noqa: E402
from tools import plot  # noqa: E402

README_PATH = common.ROOT / "README.md"
RESULTS_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
SAMPLES_MARKERS = ("<!-- samples:start -->", "<!-- samples:end -->")
QUICK_FLAGS = ["--max_iters", "500", "--eval_interval", "100", "--eval_iters", "20"]
SAMPLE_CHARS = 300  # of each stage's sample, in the README
STDERR_TAIL = 12  # lines of a failed stage's stderr shown


TABLE_HEADER = (
    "stage",
    "file",
    "concept",
    "parameters",
    "train loss",
    "val loss",
    "lecture val",
    "wall time",
    "machine",
)


@dataclasses.dataclass
class Result:
    """One stage's row of the table (and one entry of results.json)."""

    stage: str  # "01_bigram"
    concept: str  # the first line of its docstring, after "Stage NN: "
    parameters: int | None  # from its `model: N parameters` line
    train_loss: float | None  # the last row of its history
    val_loss: float | None
    lecture_val: str
    wall_time_s: float  # the whole process: start-up, data, training, the closing sample
    machine: str
    preset: str | None = None  # for a stage with presets (10): the one it ran with, when known

    def row(self) -> list[str]:
        concept = self.concept + (f" (preset: {self.preset})" if self.preset else "")
        return [
            self.stage[:2],
            f"`stages/{self.stage}.py`",  # what a learner copies to run it
            concept,
            "—" if self.parameters is None else f"{self.parameters:,}",
            _loss(self.train_loss),
            _loss(self.val_loss),
            self.lecture_val,
            f"{self.wall_time_s:.1f} s",
            self.machine,
        ]


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------
# what a stage file says about itself, read without running it


def stage_facts(stage: str) -> tuple[str, bool]:
    """(concept, has_presets) from the stage's source: parsed with ast, so nothing is imported or run.
    A stage has presets when it defines PRESETS or imports it."""
    tree = ast.parse((harness.stages.STAGE_DIR / f"{stage}.py").read_text(encoding="utf-8"))
    doc = (ast.get_docstring(tree) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    concept = re.sub(r"^Stage \d+:\s*", "", first).rstrip(".").strip() or stage[3:].replace("_", " ")
    targets = [t for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    targets += [node.target for node in tree.body if isinstance(node, ast.AnnAssign)]
    imported = [a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names]
    has_presets = "PRESETS" in imported or any(isinstance(t, ast.Name) and t.id == "PRESETS" for t in targets)
    return concept, has_presets


# ----------------------------------------------------------------------------------------------
# the README


def marker_span(text: str, markers: tuple[str, str], readme: Path, required: bool) -> tuple[int, int] | None:
    """(end of the start marker, start of the end marker); None when both are absent and not required."""
    start, end = markers
    n_start, n_end = text.count(start), text.count(end)
    if n_start == n_end == 0 and not required:
        return None
    if n_start == n_end == 0:
        raise harness.UserError(
            f"{readme} has no {start} and {end} markers; "
            "put those two lines where the results table should go, then run again"
        )
    if n_start != 1 or n_end != 1 or text.index(end) < text.index(start):
        raise harness.UserError(
            f"{readme} should have one {start} line followed by one {end} line, but has {n_start} and {n_end}"
            + (" in the wrong order" if n_start == n_end == 1 else "")
            + "; fix the markers, then run again"
        )
    i = text.index(start) + len(start)
    return i, text.index(end, i)


def read_readme(readme: Path) -> str:
    """The README's text, checked before any training: markers present, file writable."""
    try:
        with open(readme, encoding="utf-8", newline="") as f:  # newline="": keep its line endings, \r\n included
            text = f.read()
    except FileNotFoundError:
        raise harness.UserError(
            f"--readme {readme}: no such file; give the README that holds the {RESULTS_MARKERS[0]} marker"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise harness.UserError(f"cannot read --readme {readme} ({getattr(e, 'strerror', None) or e})") from None
    marker_span(text, RESULTS_MARKERS, readme, required=True)
    marker_span(text, SAMPLES_MARKERS, readme, required=False)
    if not (os.access(readme, os.W_OK) and os.access(readme.resolve().parent, os.W_OK)):
        raise harness.UserError(f"cannot write --readme {readme}; make it writable or give another with --readme")
    return text


def replace_section(text: str, markers: tuple[str, str], readme: Path, body: str) -> str:
    """text with what lies between the markers replaced by body; everything else is kept byte for byte."""
    span = marker_span(text, markers, readme, required=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    return text[: span[0]] + newline + body.replace("\n", newline) + newline + text[span[1] :]


def results_table(results: list[Result], made_by: str) -> str:
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rows = [line(TABLE_HEADER), line(["---"] * len(TABLE_HEADER))] + [line(r.row()) for r in results]
    return made_by + "\n\n" + "\n".join(rows)


def fenced(text: str) -> str:
    """A ```text block that no run of backticks inside the text can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def samples_section(results: list[Result], checkpoint_dir: Path) -> str:
    parts = []
    for r in results:
        sample_path = (checkpoint_dir / f"{r.stage}.pt").with_suffix(".sample.txt")
        try:
            sample = sample_path.read_text(encoding="utf-8")[:SAMPLE_CHARS]
            sample = "\n".join(
                line.rstrip() for line in sample.rstrip().splitlines()
            )  # no trailing spaces in the README
        except (OSError, UnicodeDecodeError):
            sample = f"(no sample: {sample_path} could not be read)"
        parts.append(f"**{r.stage[:2]} {r.concept}** (val {_loss(r.val_loss)})\n\n{fenced(sample)}")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
# running one stage


def run_process(cmd: list[str], indent: str = "    ") -> tuple[int, list[str], list[str], float]:
    """Run cmd, echoing its stdout as it comes; returns (exit status, stdout lines, stderr lines, seconds).

    Ctrl-C waits for the stage to stop (it saves a checkpoint first) and returns EXIT_INTERRUPTED.
    """
    # unbuffered: a stage's lines arrive as it prints them, not in 8 KB blocks; UTF-8: its samples
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # both pipes drain: no deadlock
    reader.start()
    out = []
    interrupted = False
    try:
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            print(indent + line, end="", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the stage too (one process group): let it save its checkpoint and stop
        interrupted = True
        try:
            proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait any longer
            proc.kill()
            proc.wait()
    seconds = time.perf_counter() - t0
    reader.join()
    code = harness.errors.EXIT_INTERRUPTED if interrupted else proc.returncode
    return code, out, [line.rstrip("\n") for line in err], seconds


def collect(
    stage: str, stdout: list[str], checkpoint_dir: Path, seconds: float, flags: list[str], machine: str
) -> Result:
    """The stage's row, from its output and the files it wrote."""
    concept, has_presets = stage_facts(stage)
    parameters = None
    preset = None
    for line in stdout:
        if m := re.match(r"model: ([\d,]+) parameters", line):
            parameters = int(m.group(1).replace(",", ""))
        if m := re.match(r"preset: (\S+)", line):
            preset = m.group(1)
    if has_presets and preset is None:  # no "preset:" line: it came from the flags (--preset cpu|video)
        preset = harness.cli.flag_value(flags, "--preset") or "see flags"
    rows = harness.checkpoints.read_history(harness.checkpoints.history_path(checkpoint_dir / f"{stage}.pt"))
    last = rows[-1] if rows else {}
    return Result(
        stage=stage,
        concept=concept,
        parameters=parameters,
        train_loss=last.get("train_loss"),
        val_loss=last.get("val_loss"),
        lecture_val=harness.references.lecture_figure(stage, preset),
        wall_time_s=round(seconds, 1),
        machine=machine,
        preset=preset,
    )


# ----------------------------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog="python tools/train_all.py",
        usage="%(prog)s [--quick] [--stages 01,02,...] [--checkpoints DIR] [--readme PATH] [--data PATH] "
        "[-- STAGE FLAGS ...]",
        description="Train every stage (or the listed ones) one after another, "
        "then write the results table into the README, "
        "the results to DIR/results.json and, with matplotlib installed, the loss curves to DIR/curves.png.",
        epilog="Flags after -- go to every stage and win over --quick's: "
        "python tools/train_all.py --quick -- --max_iters 200 --device cpu. "
        "A failed stage stops the run (exit status 1) and leaves the README as it was.",
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"train every stage for fewer steps ({' '.join(QUICK_FLAGS)}) instead of its defaults; the table says so",
    )
    parser.add_argument(
        "--stages",
        default=None,
        metavar="LIST",
        help='comma-separated stage numbers or names, e.g. "01,02" or "9,10" (default: all)',
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the checkpoints go (default: checkpoints/, checkpoints/quick/ with --quick)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        metavar="PATH",
        help="the README whose results section is rewritten (default: README.md after a full run at the defaults; "
        "with --quick, --stages or stage flags, only when given, so a partial run never replaces the measured table)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="train every stage on this UTF-8 text (default: tiny Shakespeare)",
    )
    return parser


def train_all_main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = build_parser()
    args, unknown = parser.parse_known_args(own)
    if unknown:  # most likely a stage's flag typed without the `--` before it
        raise harness.UserError(
            f"unknown argument(s): {parser.suggest(unknown)}; flags for the stages go after --, "
            "as in: python tools/train_all.py --quick -- --max_iters 200"
        )
    return train_all(args, argv, extra)


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train_all_main, argv)


def train_all(args: argparse.Namespace, argv: list[str], extra: list[str]) -> int:
    # every check a user can fail comes before the first stage trains, not an hour later
    if args.stages is not None:
        names = [s for s in args.stages.split(",") if s.strip()]
        if not names:
            raise harness.UserError(f"--stages {args.stages!r} names no stage; give numbers or names such as 01,02")
        stages = list(dict.fromkeys(harness.stages.resolve_stage(s) for s in names))
    else:
        stages = harness.stages.stage_names()
    partial = args.quick or args.stages is not None or bool(extra)
    if args.readme is None and not partial:
        args.readme = README_PATH
    if args.checkpoints is None:  # a quick run keeps its checkpoints apart from the full runs'
        args.checkpoints = (
            harness.checkpoints.CHECKPOINT_DIR / "quick" if args.quick else harness.checkpoints.CHECKPOINT_DIR
        )
    if args.readme is not None:
        read_readme(args.readme)
    harness.files.check_writable_dir(args.checkpoints, f"into --checkpoints {args.checkpoints}", "--checkpoints")

    flags = (QUICK_FLAGS if args.quick else []) + extra  # later flags win: extra overrides --quick's
    data = ["--data", str(args.data)] if args.data is not None else []
    machine = harness.machine.machine_name()
    results = []
    for n, stage in enumerate(stages, 1):
        ckpt = args.checkpoints / f"{stage}.pt"
        cmd = [sys.executable, str(harness.stages.STAGE_DIR / f"{stage}.py"), "--checkpoint", str(ckpt), *data, *flags]
        print(f"[{n}/{len(stages)}] {stage}: {shlex.join(['python', f'stages/{stage}.py', *cmd[2:]])}", flush=True)
        code, stdout, stderr, seconds = run_process(cmd)
        if code == harness.errors.EXIT_INTERRUPTED:
            for line in stderr[-STDERR_TAIL:]:  # the stage's own word on what it saved
                print(f"    {line}", file=sys.stderr)
            print(
                f"interrupted during {stage}: the stages after it did not run and the README is unchanged",
                file=sys.stderr,
            )
            return harness.errors.EXIT_INTERRUPTED
        if code != 0:
            tail = stderr[-STDERR_TAIL:]
            print(
                f"error: stage {stage} failed (exit status {code} after {seconds:.1f} s); the README is unchanged. "
                + ("The last lines of its stderr:" if tail else "It wrote nothing to stderr; its output is above."),
                file=sys.stderr,
            )
            for line in tail:
                print(f"    {line}", file=sys.stderr)
            return 1
        for line in stderr:  # warnings of a stage that succeeded: shown, after its output
            print(f"    {line}", file=sys.stderr)
        result = collect(stage, stdout, args.checkpoints, seconds, flags, machine)
        results.append(result)
        print(f"[{n}/{len(stages)}] {stage}: done in {seconds:.1f} s, val loss {_loss(result.val_loss)}", flush=True)

    results_json = args.checkpoints / "results.json"
    results_json.write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"results: {results_json}")

    command = shlex.join(["python", "tools/train_all.py", *argv])
    made_by = f"Made by `{command}` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d} (UTC)"
    iterations = harness.cli.flag_value(flags, "--max_iters")
    if args.quick:
        made_by += f"; quick mode: {iterations} iterations per stage, not the stages' defaults"
    elif iterations is not None:
        made_by += f"; {iterations} iterations per stage (from the flags), not the stages' defaults"
    table = results_table(results, made_by + ".")
    if args.readme is None:
        print(
            f"\n{table}\n\nthe README is unchanged: this was not a full run at the defaults "
            "(give --readme README.md to write it anyway)"
        )
        draw_chart(results, args.checkpoints)
        return 0
    text = read_readme(args.readme)  # again: it may have been edited while the stages trained
    text = replace_section(text, RESULTS_MARKERS, args.readme, table)
    if marker_span(text, SAMPLES_MARKERS, args.readme, required=False) is not None:
        text = replace_section(text, SAMPLES_MARKERS, args.readme, samples_section(results, args.checkpoints))
    try:
        harness.files.write_atomically(args.readme.resolve(), lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise harness.UserError(
            f"cannot write --readme {args.readme} ({e.strerror or e}); the results are in {results_json}"
        ) from None
    print(f"\n{table}\n\nwrote the table for {len(results)} stage(s) into {args.readme}")
    draw_chart(results, args.checkpoints)
    return 0


def draw_chart(results: list[Result], checkpoint_dir: Path) -> None:
    if plot.have_matplotlib():
        try:
            print(
                f"chart: {plot.plot_stages([r.stage for r in results], checkpoint_dir, checkpoint_dir / 'curves.png')}"
            )
        except harness.UserError as e:  # the table is written; a chart that cannot be drawn does not undo it
            print(f"warning: the chart was not drawn: {e}", file=sys.stderr)
    else:
        print("chart skipped: matplotlib is not installed (an optional extra: pip install matplotlib)")


if __name__ == "__main__":
    sys.exit(main())
