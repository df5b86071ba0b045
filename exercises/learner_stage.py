"""The plumbing between an exercise and the stages: the learner's file imported by path, a stage
with the learner's part in it trained through the stage's own loop, flags, progress bar and Ctrl-C
handling into the exercise's own checkpoint, and the budget a stage's file trains at."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import traceback
from pathlib import Path
from types import ModuleType

import torch

import harness
import harness.checkpoints
import harness.cli
import harness.errors
import tools.stages

STAGE_10 = "10_gpt"
# what a variant of a stage must keep to be compared with it: the characters it trains on (steps x
# batch x context) and how its val loss is measured. The rest (the model, the optimizer, the rate
# and its schedule, dropout) is the variant's to change.
BUDGET = ("batch_size", "block_size", "max_iters", "eval_iters")


def raised(e: BaseException, path: Path) -> str:
    """What e is and where: in the learner's file at path if it passed through it ("your code raised
    ZeroDivisionError at ex1.py line 57: division by zero"), else the last place it passed."""
    if isinstance(e, SyntaxError) and e.filename and Path(e.filename).resolve() == path.resolve():
        return f"a syntax error at {path.name} line {e.lineno}: {e.msg}"
    frames = traceback.extract_tb(e.__traceback__)
    theirs = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    message = harness.errors.first_line(e)
    if theirs:
        return f"your code raised {type(e).__name__} at {path.name} line {theirs[-1].lineno}: {message}"
    where = f" at {Path(frames[-1].filename).name} line {frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__} was raised{where}, outside your file: {message}"


def load_learner_file(path: Path, where: str = "give the path of your copy with --file") -> ModuleType:
    """Import the learner's file by path; one clear error if it cannot be (where: how to name another)."""
    if not path.is_file():
        raise harness.UserError(f"no exercise file at {path}: {where}")
    spec = importlib.util.spec_from_file_location(f"learner_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 (whatever the learner's file raises, say where)
        raise harness.UserError(f"{path} cannot be imported: {raised(e, path)}") from None
    return module


def resolved_config(module: ModuleType, flags: list[str]):
    """The Config a run of module with flags trains with, resolved as the harness resolves it
    (defaults, then a preset, then the flags)."""
    presets = getattr(module, "PRESETS", None)
    parser = harness.cli.build_parser(module.__name__, module.__doc__, module.Config, presets)
    args = parser.parse_args(flags)
    given = harness.cli.explicit_flags(parser, flags)
    with contextlib.redirect_stdout(io.StringIO()):  # the preset's own lines: the runs print them
        return harness.cli.resolve_config(module.Config, args, given, presets, torch.device("cpu"), None)[0]


def budget_of(module: ModuleType, flags: list[str]) -> dict:
    """The BUDGET fields of the Config that a run of module with flags trains at."""
    cfg = resolved_config(module, flags)
    return {k: getattr(cfg, k) for k in BUDGET if hasattr(cfg, k)}


def cpu_preset_flags(module: ModuleType) -> list[str]:
    """--preset cpu for a file with stage 10's presets: the budget exercise 4 compares at."""
    return ["--preset", "cpu"] if "cpu" in getattr(module, "PRESETS", {}) else []


def stage_10_with(attention_cls: type | None = None) -> ModuleType:
    """Stage 10, freshly imported; with attention_cls built wherever it builds a MultiHeadAttention
    (its Block looks the name up when it builds one)."""
    module = tools.stages.load_stage(STAGE_10)
    if attention_cls is not None:
        module.MultiHeadAttention = attention_cls
    return module


def train_stage_10_with(attention_cls: type, exercise_file: str, argv: list[str] | None = None) -> int:
    """`python exercises/exN_name.py [stage 10's flags]`: stage 10 with attention_cls, trained into
    checkpoints/exN_name.pt (never stage 10's own), then compared with stage 10's last run."""
    name = Path(exercise_file).stem
    if Path(exercise_file).parent.name == "solutions":  # the worked solution never trains over the learner's
        name += "_solution"
    argv = sys.argv[1:] if argv is None else list(argv)

    def main(argv: list[str]) -> None:
        given = tools.stages.stage_flag(argv, "--checkpoint")
        ckpt = Path(given) if given else harness.checkpoints.CHECKPOINT_DIR / f"{name}.pt"
        if ckpt.resolve() == harness.checkpoints.default_path(STAGE_10).resolve():
            raise harness.UserError(
                f"--checkpoint {ckpt} is stage 10's own checkpoint; the exercise trains into one of its "
                f"own: leave --checkpoint out ({name}.pt) or give another path"
            )
        if given is None:
            argv = [*argv, "--checkpoint", str(ckpt)]
        if ("--sample" in argv or "--resume" in argv) and not ckpt.exists():
            raise harness.UserError(f"no checkpoint at {ckpt}: train first with python {exercise_file}")
        try:
            stage_10_with(attention_cls).main(argv)
        except NotImplementedError as e:
            if "not written yet" not in str(e):
                raise
            check = "python exercises/check.py 1" + (
                "" if name == "ex1_causal_self_attention" else f" --file {exercise_file}"
            )
            raise harness.UserError(f"{e}: write it, then check it with {check}") from None
        if "--sample" not in argv:
            print(compare_with_stage_10(ckpt))

    return harness.run_main(main, argv)


def compare_with_stage_10(ckpt: Path) -> str:
    """The exercise's val loss and training time beside stage 10's last run, at the steps both estimated."""
    theirs_path = harness.checkpoints.default_path(STAGE_10)
    if not theirs_path.exists():
        return f"no run of stage 10 to compare with: python stages/10_gpt.py trains one ({theirs_path})"
    mine = harness.checkpoints.load(ckpt, STAGE_10)
    try:
        theirs = harness.checkpoints.load(theirs_path, STAGE_10)
    except harness.UserError as e:
        return f"stage 10's checkpoint cannot be compared with: {e}"
    # rows are matched by step, so how often the loss was estimated may differ; so may how long the
    # run is, as stage 10's rate is constant
    free = {"eval_interval", "max_iters"}
    differ = [k for k, v in mine.config.items() if k not in free and theirs.config.get(k) != v]
    if differ:
        shown = ", ".join(f"{k} {mine.config[k]} here, {theirs.config.get(k)} there" for k in differ)
        return f"stage 10's last run ({theirs_path}) used other hyperparameters ({shown}): not compared"
    by_step = {r["step"]: r for r in theirs.history}
    rows = [(r, by_step[r["step"]]) for r in mine.history if r["step"] in by_step]
    if not rows:
        return f"stage 10's last run ({theirs_path}) estimated its loss at no step this one did: not compared"
    lines = [f"beside stage 10's per-head attention ({theirs_path}), at the same steps:"]
    lines.append(f"  {'step':>6}  {'val (yours)':>11}  {'val (per head)':>14}  {'seconds (yours / per head)':>26}")
    for m, t in rows:
        seconds = f"{m['elapsed_s']:.1f} / {t['elapsed_s']:.1f}"
        lines.append(f"  {m['step']:>6}  {m['val_loss']:>11.4f}  {t['val_loss']:>14.4f}  {seconds:>26}")
    last_mine, last_theirs = rows[-1]
    if last_mine["elapsed_s"] > 0:
        ratio = last_theirs["elapsed_s"] / last_mine["elapsed_s"]
        lines.append(
            f"  to step {last_mine['step']}: {ratio:.2f}x the per-head form's speed, loss estimates "
            "included (two separate runs: on a busy machine the ratio moves)"
        )
    return "\n".join(lines)
