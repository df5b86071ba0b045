"""Train every stage one after another and record what each run measured.

    python tools/train_all.py                          every stage at its defaults
    python tools/train_all.py --quick                  500 steps each: a first look in a fraction of the time
    python tools/train_all.py --stages 01,09 -- --device cpu --seed 1

Each stage runs as its own process, exactly as a user would type it, with --checkpoint DIR/<stage>.pt;
flags after `--` go to every stage. The results come from what the stages leave behind: the
parameter count from their output, the losses from `<stage>.history.csv`, the sample from
`<stage>.sample.txt`. They go to DIR/results.json, and, when matplotlib is installed, are drawn to
DIR/curves.png. A full run at the defaults is also the project's record: docs/runs.json, with the
machine, the torch and the date, from which `python tools/pages.py` (run at the end) makes the
README's table, the stages' pages and the "is my loss normal?" references.
"""

from __future__ import annotations

import argparse
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import common  # noqa: E402
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.errors  # noqa: E402
import harness.training  # noqa: E402
import tools.machine  # noqa: E402
import tools.stages  # noqa: E402
from tools import pages, plot  # noqa: E402

QUICK_FLAGS = ["--max_iters", "500", "--eval_interval", "100", "--eval_iters", "20"]
STDERR_TAIL = 12  # lines of a failed stage's stderr shown


@dataclasses.dataclass
class Result:
    """One stage's row of the table: its entry in results.json, and in the record without its name."""

    stage: str  # "01_bigram"
    concept: str  # the first line of its docstring, after "Stage NN: "
    preset: str | None  # for a stage with presets (10): the one it ran with, when known
    parameters: int | None  # from its `model: N parameters` line
    train_loss: float | None  # the last row of its history
    val_loss: float | None
    steps: int | None  # steps trained: the last estimate's step + 1
    wall_time_s: float  # the whole process: start-up, data, training, the closing sample
    history: list[list[float]]  # [step, train, val] each estimate
    sample: str  # the closing sample, or why there is none


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


def collect(stage: str, stdout: list[str], checkpoint_dir: Path, seconds: float, flags: list[str]) -> Result:
    """The stage's row, from its output and the files it wrote."""
    module = tools.stages.load_stage(stage)
    parameters = None
    preset = None
    for line in stdout:
        if m := re.match(r"model: ([\d,]+) parameters", line):
            parameters = int(m.group(1).replace(",", ""))
        if m := re.match(r"preset: (\S+)", line):
            preset = m.group(1)
    if hasattr(module, "PRESETS") and preset is None:  # no "preset:" line: it came from the flags (--preset cpu|video)
        preset = tools.stages.stage_flag(flags, "--preset") or "see flags"
    rows = harness.checkpoints.read_history(harness.checkpoints.history_path(checkpoint_dir / f"{stage}.pt"))
    last = rows[-1] if rows else {}
    sample_path = checkpoint_dir / f"{stage}.sample.txt"
    try:
        sample = sample_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        sample = f"(no sample: {sample_path} could not be read)"
    return Result(
        stage=stage,
        concept=re.sub(r"^Stage \d+:\s*", "", module.__doc__.splitlines()[0]).rstrip("."),
        parameters=parameters,
        train_loss=last.get("train_loss"),
        val_loss=last.get("val_loss"),
        wall_time_s=round(seconds, 1),
        preset=preset,
        steps=last["step"] + 1 if last else None,
        history=[[r["step"], r["train_loss"], r["val_loss"]] for r in rows],
        sample=sample,
    )


# ----------------------------------------------------------------------------------------------
# the command line


def build_parser() -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog="python tools/train_all.py",
        usage="%(prog)s [--quick] [--stages 01,02,...] [--checkpoints DIR] [--record PATH] [--data PATH] "
        "[-- STAGE FLAGS ...]",
        description="Train every stage (or the listed ones) one after another and print their table; write the "
        "results to DIR/results.json, the loss curves to DIR/curves.png (with matplotlib) and, after a full run "
        "at the defaults, the record docs/runs.json, from which the pages are then made anew.",
        epilog="Flags after -- go to every stage and win over --quick's: "
        "python tools/train_all.py --quick -- --max_iters 200 --device cpu. "
        "A failed stage stops the run (exit status 1) and leaves the record as it was.",
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"train every stage for fewer steps ({' '.join(QUICK_FLAGS)}) instead of its defaults; the table says so",
    )
    parser.add_argument(
        "--stages", metavar="LIST", help='comma-separated stage numbers or names, e.g. "01,02" or "9,10" (default: all)'
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        metavar="DIR",
        help="where the checkpoints go (default: checkpoints/, checkpoints/quick/ with --quick)",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="PATH",
        help="where the record of the runs goes (default: docs/runs.json after a full run at the defaults, "
        "and then the pages are made anew from it; with --quick, --stages, --data or stage flags, only when "
        "given, so a partial run never replaces the measured record)",
    )
    parser.add_argument(
        "--data", type=Path, metavar="PATH", help="train every stage on this UTF-8 text (default: tiny Shakespeare)"
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
        stages = list(dict.fromkeys(tools.stages.resolve_stage(s) for s in names))
    else:
        stages = tools.stages.stage_names()
    args.record = record_path(args, extra)
    if args.checkpoints is None:  # a quick run keeps its checkpoints apart from the full runs'
        args.checkpoints = (
            harness.checkpoints.CHECKPOINT_DIR / "quick" if args.quick else harness.checkpoints.CHECKPOINT_DIR
        )
    if args.record is not None:
        harness.checkpoints.check_writable_dir(args.record.parent, f"for --record {args.record}", "--record")
    harness.checkpoints.check_writable_dir(args.checkpoints, f"into --checkpoints {args.checkpoints}", "--checkpoints")

    flags = (QUICK_FLAGS if args.quick else []) + extra  # later flags win: extra overrides --quick's
    data = ["--data", str(args.data)] if args.data is not None else []
    results = []
    for n, stage in enumerate(stages, 1):
        ckpt = args.checkpoints / f"{stage}.pt"
        cmd = [sys.executable, str(tools.stages.STAGE_DIR / f"{stage}.py"), "--checkpoint", str(ckpt), *data, *flags]
        print(f"[{n}/{len(stages)}] {stage}: {shlex.join(['python', f'stages/{stage}.py', *cmd[2:]])}", flush=True)
        code, stdout, stderr, seconds = run_process(cmd)
        if code == harness.errors.EXIT_INTERRUPTED:
            for line in stderr[-STDERR_TAIL:]:  # the stage's own word on what it saved
                print(f"    {line}", file=sys.stderr)
            print(
                f"interrupted during {stage}: the stages after it did not run and the record is unchanged",
                file=sys.stderr,
            )
            return harness.errors.EXIT_INTERRUPTED
        if code != 0:
            tail = stderr[-STDERR_TAIL:]
            print(
                f"error: stage {stage} failed (exit status {code} after {seconds:.1f} s); the record is unchanged. "
                + ("The last lines of its stderr:" if tail else "It wrote nothing to stderr; its output is above."),
                file=sys.stderr,
            )
            for line in tail:
                print(f"    {line}", file=sys.stderr)
            return 1
        for line in stderr:  # warnings of a stage that succeeded: shown, after its output
            print(f"    {line}", file=sys.stderr)
        result = collect(stage, stdout, args.checkpoints, seconds, flags)
        results.append(result)
        val = pages.number_or_dash(result.val_loss, ".4f")
        print(f"[{n}/{len(stages)}] {stage}: done in {seconds:.1f} s, val loss {val}", flush=True)

    results_json = args.checkpoints / "results.json"
    results_json.write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"results: {results_json}")

    command = shlex.join(["python", "tools/train_all.py", *argv])
    iterations = tools.stages.stage_flag(flags, "--max_iters")
    note = None
    if args.quick:
        note = f"quick mode: {iterations} iterations per stage, not the stages' defaults"
    elif iterations is not None:
        note = f"{iterations} iterations per stage (from the flags), not the stages' defaults"
    record = record_of(results, command, note)
    print(f"\n{pages.stages_table(record, links=False)}\n")
    draw_chart(results, args.checkpoints)
    if args.record is None:
        print("the record is unchanged: this was not a full run at the defaults (--record PATH writes it)")
        return 0
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    try:
        harness.checkpoints.write_atomically(args.record.resolve(), lambda f: f.write(text.encode("utf-8")))
    except OSError as e:
        raise harness.UserError(
            f"cannot write --record {args.record} ({e.strerror or e}); the results are in {results_json}"
        ) from None
    print(f"recorded {len(results)} stage(s) in {args.record}")
    if args.record.resolve() == harness.training.RECORD:
        try:
            written = pages.write_pages(pages.load_sources())
        except OSError as e:
            raise harness.UserError(
                f"the record is written, but not the pages ({e.strerror or e}): run python tools/pages.py"
            ) from None
        for path in written:
            print(f"wrote {path.relative_to(common.ROOT)}")
        if "10_gpt" in stages and plot.have_matplotlib():  # stage 10's page shows its attention, drawn here
            print(f"wrote {pages.draw_attention(args.checkpoints / '10_gpt.pt').relative_to(common.ROOT)}")
    return 0


def record_path(args: argparse.Namespace, extra: list[str]) -> Path | None:
    """Where the record goes: --record, else the project's record after a full run at the defaults on
    tiny Shakespeare; None (printed only) for a partial run, which never replaces the measured one."""
    partial = args.quick or args.stages is not None or bool(extra) or args.data is not None
    return args.record if args.record is not None or partial else harness.training.RECORD


def record_of(results: list[Result], command: str, note: str | None = None) -> dict:
    """The record of the runs: what each stage measured, with the command, the machine, torch, the date;
    note says how the runs differ from the stages' defaults, if they do."""
    return {
        "command": command,
        "note": note,
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
        "machine": tools.machine.machine_name(),
        "torch": torch.__version__.split("+")[0],
        "stages": {r.stage: {k: v for k, v in dataclasses.asdict(r).items() if k != "stage"} for r in results},
    }


def draw_chart(results: list[Result], checkpoint_dir: Path) -> None:
    if plot.have_matplotlib():
        try:
            histories = plot.load_histories([r.stage for r in results], checkpoint_dir)
            print(f"chart: {plot.plot_histories(histories, checkpoint_dir / 'curves.png')}")
        except harness.UserError as e:  # the table is written; a chart that cannot be drawn does not undo it
            print(f"warning: the chart was not drawn: {e}", file=sys.stderr)
    else:
        print("chart skipped: matplotlib is not installed (an optional extra: pip install matplotlib)")


if __name__ == "__main__":
    sys.exit(main())
