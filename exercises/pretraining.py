"""The program around exercise 3: pre-train stage 10 on a large text, then fine-tune it on tiny
Shakespeare beside a run from scratch, and compare their validation losses.

The learner's file (exercises/ex3_pretrain.py) chooses the text (PRETRAINING_TEXT) and writes how
the pre-trained model becomes the fine-tuning model (carry_over) and what it is trained with
(fine_tuning_optimizer). This module does the rest, every run through the harness (progress bar,
Ctrl-C saves, a checkpoint of its own that stages/10_gpt.py can --sample from):

  1. pre-training: stage 10's model (RECIPE below) on the large text, into
     checkpoints/ex3_pretrained_<text>.pt; reused when it is there, continued when it stopped short;
  2. for each N of --steps and each seed: fine-tuning, the pre-trained model moved into tiny
     Shakespeare's vocabulary by the learner's carry_over, N steps at --finetune_lr; and from
     scratch, the same model freshly initialised, the same N steps, seed and batches, at
     --scratch_lr. Both follow nanoGPT's schedule (warm-up, then a cosine) over N steps;
  3. the validation loss of each on the whole of tiny Shakespeare's validation split, side by side,
     in <name>_results.json, and the curves in <name>.png (with matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import common
import harness
import harness.checkpoints
import harness.cli
import tools.machine
from exercises import learner_stage, training
from exercises.paired_test import verdict
from exercises.schedule import Schedule
from harness.cli import weights_origin
from tools import corpus, plot

STAGE_10 = learner_stage.STAGE_10
FIRST_SEED = 1337  # the stages' default
# The experiment's own recipe: stage 10's model at 0.8 million parameters, without dropout, at a
# rate that warms up then decays (exercises/schedule.py). Not stage 10's cpu preset: the experiment
# was measured with this one, and a run this short gains more from the schedule than from dropout.
RECIPE = dict(
    batch_size=32,
    block_size=64,
    max_iters=2000,
    eval_interval=250,
    learning_rate=3e-3,
    lr_decay=True,
    eval_iters=20,
    n_embd=128,
    n_head=4,
    n_layer=4,
    dropout=0.0,
)
PRESET = ["--preset", "ex3"]  # the recipe every run starts from; flags after -- change it
PRETRAIN_STEPS = RECIPE["max_iters"]  # 2000
PRETRAIN_LR = RECIPE["learning_rate"]  # 3e-3
SCRATCH_LR = RECIPE["learning_rate"]  # from scratch, the rate pre-training trains with
FINETUNE_LR = 3e-4  # a tenth of it: fine-tuning should nudge the pre-trained weights, not overwrite them
STEPS = [200, 500]
EVAL_INTERVAL = 50
WARMUP_FRACTION = 20  # a run of N steps warms up for N / 20 of them (100 of 2000)
SIZES = ("block_size", "n_embd", "n_head", "n_layer")  # what a fine-tuning model takes from the pre-trained one
# stage 10's flags that the experiment sets itself, run by run: refused after --
OWN_FLAGS = (
    "--data",
    "--checkpoint",
    "--max_iters",
    "--learning_rate",
    "--warmup_iters",
    "--eval_interval",
    "--seed",
    "--sample",
    "--init_from",
    "--vocab_from",
)


@dataclasses.dataclass
class Experiment:
    """What one experiment runs: the texts, the budgets, the rates, the seeds, where it saves."""

    corpus: Path | None = None  # the pre-training text; None: the learner's PRETRAINING_TEXT
    data: Path | None = None  # the fine-tuning text; None: tiny Shakespeare
    pretrained: Path | None = None  # the pre-trained checkpoint; None: ex3_pretrained_<the text's name>.pt
    pretrain_steps: int = PRETRAIN_STEPS
    pretrain_lr: float = PRETRAIN_LR
    steps: list[int] = dataclasses.field(default_factory=lambda: list(STEPS))
    finetune_lr: float = FINETUNE_LR
    scratch_lr: float = SCRATCH_LR
    eval_interval: int = EVAL_INTERVAL
    seeds: int = 1
    resume: bool = False  # continue each fine-tuning and scratch run from its checkpoint, if it has one
    flags: list[str] = dataclasses.field(default_factory=list)  # stage 10's flags, for every run
    checkpoint_dir: Path | None = None  # None: harness.checkpoints.CHECKPOINT_DIR, read when it runs
    chart: bool = True  # draw the curves (with matplotlib)


# -- the rule for the two texts --------------------------------------------------------------------


def validation_part(text: str) -> str:
    """The characters a stage validates on: the last 10%, as common.split_data splits the ids."""
    return text[int(0.9 * len(text)) :]


def validation_runs_in(pretraining_text: str, fine_tuning_text: str) -> list[str]:
    """The runs of tools/corpus.py's WINDOW normalised characters that the fine-tuning text's
    validation part shares with the pre-training text: none, for an honest comparison."""
    return corpus.shared_runs(pretraining_text, corpus.reference_windows(validation_part(fine_tuning_text)))


def overlap_error(path: Path, runs: list[str], fine_tuning_text: str) -> str:
    return (
        f"{path} holds {len(runs):,} run(s) of {corpus.WINDOW} characters of {fine_tuning_text}'s validation "
        f"part (normalised), e.g. {runs[0]!r}: a model pre-trained on it has read what it is measured on; "
        "remove them (tools/corpus.py removes every paragraph that shares one)"
    )


# -- one run of stage 10 through the harness ----------------------------------------------------------


def stage_10() -> ModuleType:
    """Stage 10, freshly imported, with the experiment's recipe: its Config takes on the schedule's
    two hyperparameters, and its one preset is RECIPE."""
    stage = learner_stage.stage_10_with(None)

    @dataclasses.dataclass
    class Config(stage.Config, Schedule):
        """Stage 10's hyperparameters and the schedule's: each is also a command-line flag."""

    stage.Config, stage.PRESETS = Config, {"ex3": RECIPE}
    return stage


def start(stage: ModuleType, argv: list[str]) -> harness.Run:
    return harness.start(stage.__file__, stage.Config, stage.__doc__, argv, stage.PRESETS)


def train(run: harness.Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> harness.Trainer:
    """Stage 10's loop: the Trainer loads a --resume checkpoint, shows progress, saves on Ctrl-C."""
    cfg = run.config
    trainer = harness.Trainer(run, model, optimizer)  # loads a checkpoint; compiles with --compile
    training.train(
        trainer,
        model,
        optimizer,
        cfg,
        batch=lambda: common.get_batch(run.data["train"], cfg.batch_size, cfg.block_size, run.train_gen),
        estimate=lambda: common.estimate_loss(model, run.data, cfg, run.eval_gen),
    )
    if trainer.trained:
        trainer.save()
        print(f"saved {run.checkpoint_path} (step {trainer.step}, {trainer.seconds():.1f} s of training)")
    return trainer


@torch.no_grad()
def whole_split_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int) -> float:
    """The mean loss over every character of ids (N,) but the first, in windows of block_size that
    follow one another: one number, without the sampling noise of a loss estimate."""
    count = (len(ids) - 1) // block_size
    x = ids[: count * block_size].view(count, block_size)  # (count, T)
    y = ids[1 : count * block_size + 1].view(count, block_size)  # (count, T) the characters after
    per_pass = max(1, common.EVAL_CHUNK_TOKENS // block_size)
    model.eval()
    total = 0.0
    for i in range(0, count, per_pass):
        _, loss = model(x[i : i + per_pass], y[i : i + per_pass])
        total += loss.item() * len(x[i : i + per_pass])
    model.train()
    return total / count


# -- the experiment -------------------------------------------------------------------------------------


def name_of(learner: ModuleType) -> str:
    """The learner file's name; the worked solution's runs never overwrite the learner's."""
    path = Path(learner.__file__)
    return path.stem + ("_solution" if path.parent.name == "solutions" else "")


def chosen_text(chosen: str | Path) -> Path:
    """PRETRAINING_TEXT as a path: a relative one is from the project's folder, wherever it runs from."""
    path = Path(chosen)
    return path if path.is_absolute() else common.ROOT / path


def corpus_of(learner: ModuleType, experiment: Experiment) -> Path:
    if experiment.corpus is not None:
        return experiment.corpus
    chosen = getattr(learner, "PRETRAINING_TEXT", None)
    if chosen is None:
        raise harness.UserError(
            f"no text to pre-train on: set PRETRAINING_TEXT in {learner.__file__} (python tools/corpus.py "
            "makes data/gcide.txt from Webster's dictionary), or pass --corpus PATH"
        )
    return chosen_text(chosen)


def checked_flags(flags: list[str]) -> None:
    """Stage 10's flags after --, for every run: none that the experiment sets itself."""
    for flag in flags:
        name = flag.split("=")[0]
        if name in OWN_FLAGS or (name.startswith("--no-") and "--" + name[5:] in OWN_FLAGS):
            raise harness.UserError(
                f"{name} after -- is set by the experiment itself, run by run; use its own flags (--corpus, "
                "--data, --pretrained, --pretrain_steps, --steps, the rates, --eval_interval, --seeds, --resume)"
            )


def pretrain(experiment: Experiment, source: Path, path: Path) -> harness.checkpoints.Checkpoint:
    """The pre-trained checkpoint at path: reused when it has the steps asked for, else trained or continued."""
    stage = stage_10()
    asked = learner_stage.resolved_config(stage, [*PRESET, *experiment.flags])  # parses the flags: a typo fails now
    if path.exists():
        ckpt = harness.checkpoints.load(path, STAGE_10, "--pretrained")
        differ = {k: (ckpt.config.get(k), getattr(asked, k)) for k in SIZES if ckpt.config.get(k) != getattr(asked, k)}
        if differ:
            shown = ", ".join(f"{k} {there} there, {here} asked" for k, (there, here) in differ.items())
            raise harness.UserError(
                f"{path} was pre-trained at other sizes ({shown}); delete it to pre-train again, or pass "
                "--pretrained PATH for a model of its own"
            )
        if ckpt.step >= experiment.pretrain_steps:
            val = f", val loss {ckpt.history[-1]['val_loss']:.4f}" if ckpt.history else ""
            print(f"pre-trained model: {path} (step {ckpt.step}{val}), reused; delete it to pre-train again")
            return ckpt
        print(f"pre-trained model: {path} stopped at step {ckpt.step} of {experiment.pretrain_steps}: continuing it")
    else:
        fine_tuning_text, where = harness.cli.load_text(experiment.data)
        text = harness.cli.read_text(source, "--corpus" if experiment.corpus else "PRETRAINING_TEXT")
        runs = validation_runs_in(text, fine_tuning_text)
        if runs:
            raise harness.UserError(overlap_error(source, runs, where.name))
        print(f"pre-training stage 10 on {source} for {experiment.pretrain_steps} steps, into {path}")
    argv = [*PRESET, *experiment.flags, "--data", str(source), "--checkpoint", str(path)]
    argv += ["--max_iters", str(experiment.pretrain_steps), "--learning_rate", str(experiment.pretrain_lr)]
    argv += ["--warmup_iters", str(warmup(experiment.pretrain_steps)), "--seed", str(FIRST_SEED)]
    argv += ["--resume"] if path.exists() else []
    run = start(stage, argv)
    model = stage.LanguageModel(run.vocab_size, run.config).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.learning_rate)
    train(run, model, optimizer)
    return harness.checkpoints.load(path, STAGE_10, "--pretrained")


def warmup(steps: int) -> int:
    return max(1, steps // WARMUP_FRACTION)


def n_step_run(
    experiment: Experiment,
    path: Path,
    steps: int,
    seed: int,
    learning_rate: float,
    sizes: dict[str, int],
) -> harness.Run:
    """The harness's Run of a fine-tuning or scratch run: tiny Shakespeare (or --data), its own
    vocabulary, the pre-trained model's sizes, N steps of the recipe's schedule."""
    argv = [*PRESET, *experiment.flags, *[f for k, v in sizes.items() for f in (f"--{k}", str(v))]]
    argv += ["--checkpoint", str(path), "--max_iters", str(steps), "--learning_rate", str(learning_rate)]
    argv += ["--warmup_iters", str(warmup(steps)), "--eval_interval", str(experiment.eval_interval)]
    argv += ["--seed", str(seed)] + (["--data", str(experiment.data)] if experiment.data else [])
    if experiment.resume and path.exists():
        argv.append("--resume")
    return start(stage_10(), argv)


def fine_tune(
    learner: ModuleType, pretrained: harness.checkpoints.Checkpoint, run: harness.Run, source: Path
) -> tuple[torch.nn.Module, harness.Trainer]:
    """The learner's parts: the pre-trained weights carried over into a model of run's vocabulary,
    and the optimizer it fine-tunes with; then N steps of training."""
    model = stage_10().LanguageModel(run.vocab_size, run.config)  # run's seed: the same as the scratch run's
    if not run.args.resume:
        learner.carry_over(pretrained, model, run.tokenizer.chars)
        run.weights_origin = weights_origin(source, pretrained)  # every checkpoint says where it started
    model.to(run.device)
    optimizer = learner.fine_tuning_optimizer(model, pretrained, run.config)
    return model, train(run, model, optimizer)


def from_scratch(run: harness.Run) -> tuple[torch.nn.Module, harness.Trainer]:
    model = stage_10().LanguageModel(run.vocab_size, run.config).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.config.learning_rate)
    return model, train(run, model, optimizer)


KINDS = ("pre-trained", "from scratch")


@dataclasses.dataclass
class Pair:
    """The two runs of one N and one seed: each one's whole-split val loss and loss history."""

    steps: int
    seed: int
    val: dict[str, float] = dataclasses.field(default_factory=dict)  # "pre-trained", "from scratch"
    history: dict[str, list[dict]] = dataclasses.field(default_factory=dict)


def run_experiment(learner: ModuleType, experiment: Experiment) -> dict[str, Any]:
    """Every run of the experiment, in order; the results, also written to <name>_results.json."""
    out = experiment.checkpoint_dir or harness.checkpoints.CHECKPOINT_DIR
    name = name_of(learner)
    source = corpus_of(learner, experiment)
    checked_flags(experiment.flags)
    pre_path = experiment.pretrained or out / f"ex3_pretrained_{source.stem}.pt"
    if pre_path.resolve() == harness.checkpoints.default_path(STAGE_10).resolve():
        raise harness.UserError(
            f"--pretrained {pre_path} is stage 10's own checkpoint; the exercise pre-trains into one of its own: "
            "leave --pretrained out, or give another path"
        )
    started = time.perf_counter()
    pretrained = pretrain(experiment, source, pre_path)
    sizes = {k: pretrained.config[k] for k in SIZES}
    seeds = [FIRST_SEED + i for i in range(experiment.seeds)]
    total, done = 2 * len(experiment.steps) * len(seeds), 0
    pairs = []
    for steps in experiment.steps:
        for seed in seeds:
            pair = Pair(steps, seed)
            for kind in KINDS:
                done += 1
                rate = experiment.finetune_lr if kind == "pre-trained" else experiment.scratch_lr
                what = "fine-tuning the pre-trained model" if kind == "pre-trained" else "training from scratch"
                print(f"\n[run {done} of {total}] {what} for {steps} steps at {rate:g}, seed {seed}", flush=True)
                stem = f"{name}_finetuned" if kind == "pre-trained" else "ex3_scratch"
                path = out / f"{stem}_{steps}_seed{seed}.pt"
                run = n_step_run(experiment, path, steps, seed, rate, sizes)
                model, trainer = (
                    fine_tune(learner, pretrained, run, pre_path) if kind == "pre-trained" else from_scratch(run)
                )
                pair.val[kind] = whole_split_loss(model, run.data["val"], run.config.block_size)
                pair.history[kind] = trainer.history
            pairs.append(pair)
    results = {
        "machine": tools.machine.machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "corpus": str(source),
        "pretrained": {"path": str(pre_path), "step": pretrained.step, "history": pretrained.history[-1:]},
        "sizes": sizes,
        "rates": {
            "pretrain": experiment.pretrain_lr,
            "finetune": experiment.finetune_lr,
            "scratch": experiment.scratch_lr,
        },
        "seeds": seeds,
        "val_loss": {str(n): {k: [p.val[k] for p in pairs if p.steps == n] for k in KINDS} for n in experiment.steps},
        "minutes": (time.perf_counter() - started) / 60,
    }
    print()
    print(report(pretrained, source, pairs, experiment.steps))
    path = out / f"{name}_results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {path}")
    if experiment.chart:
        print(chart(pairs, out / f"{name}.png"))
    results["pairs"] = pairs
    return results


def report(pretrained: harness.checkpoints.Checkpoint, source: Path, pairs: list[Pair], steps: list[int]) -> str:
    last = pretrained.history[-1] if pretrained.history else None
    lines = [f"pre-trained {pretrained.step} steps on {source}"]
    if last:
        lines[0] += (
            f": train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f} there "
            f"(a gap of {last['val_loss'] - last['train_loss']:+.4f})"
        )
    first = pairs[0].history.get("pre-trained", [])
    if first and first[0]["step"] == 0:
        lines.append(
            f"before fine-tuning, its val loss on the fine-tuning text: {first[0]['val_loss']:.4f} (estimated)"
        )
    lines.append("val loss on the whole validation split of the fine-tuning text:")
    lines.append(f"  {'steps':>6}  {'seed':>5}  {'pre-trained':>11}  {'from scratch':>12}  {'difference':>10}")
    for p in pairs:
        a, b = p.val["pre-trained"], p.val["from scratch"]
        lines.append(f"  {p.steps:>6}  {p.seed:>5}  {a:>11.4f}  {b:>12.4f}  {a - b:>+10.4f}")
    for n in steps:
        scratch = [p.val["from scratch"] for p in pairs if p.steps == n]
        tuned = [p.val["pre-trained"] for p in pairs if p.steps == n]
        lines.append(f"  {n} steps, pre-trained against from scratch: {verdict(scratch, tuned)}")
    return "\n".join(lines)


def chart(pairs: list[Pair], path: Path) -> str:
    """Each run's val loss against the step: fine-tuned solid, from scratch dashed, one colour an N."""
    if not plot.have_matplotlib():
        return f"no chart: {plot.MATPLOTLIB_HINT}"
    figure_cls = plot.import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure_cls(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {n: f"C{i}" for i, n in enumerate(dict.fromkeys(p.steps for p in pairs))}
    labelled = set()
    for p in pairs:
        for kind, style in (("pre-trained", "-"), ("from scratch", "--")):
            rows = p.history[kind]
            label = f"{kind}, {p.steps} steps"
            ax.plot(
                [r["step"] for r in rows],
                [r["val_loss"] for r in rows],
                style,
                color=colours[p.steps],
                label=None if label in labelled else label,
            )
            labelled.add(label)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (estimated)")
    ax.set_title("fine-tuning the pre-trained model against training from scratch")
    ax.legend()
    return f"chart: {plot.save_figure(fig, path)}"


# -- the command line ------------------------------------------------------------------------------------


def build_parser(learner: ModuleType) -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog=runner_command(learner.__file__),
        description=(learner.__doc__ or "").strip().split("\n\n")[0],
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
        epilog="Flags after -- go to every run of stage 10 (e.g. -- --device cpu --batch_size 16).",
    )
    rate, count = harness.cli.positive(float), harness.cli.positive(int)
    texts = parser.add_argument_group("the texts")
    texts.add_argument(
        "--corpus", type=Path, default=None, metavar="PATH", help="pre-train on it (default: PRETRAINING_TEXT)"
    )
    texts.add_argument(
        "--data", type=Path, default=None, metavar="PATH", help="fine-tune on it (default: tiny Shakespeare)"
    )
    budget = parser.add_argument_group("the budgets and rates")
    budget.add_argument(
        "--pretrain_steps", type=count, default=PRETRAIN_STEPS, metavar="INT", help="steps of pre-training"
    )
    budget.add_argument("--pretrain_lr", type=rate, default=PRETRAIN_LR, metavar="FLOAT", help="pre-training's rate")
    budget.add_argument(
        "--steps", type=count, nargs="+", default=STEPS, metavar="N", help="steps of each fine-tuning and scratch run"
    )
    budget.add_argument("--finetune_lr", type=rate, default=FINETUNE_LR, metavar="FLOAT", help="fine-tuning's rate")
    budget.add_argument("--scratch_lr", type=rate, default=SCRATCH_LR, metavar="FLOAT", help="the rate from scratch")
    budget.add_argument(
        "--eval_interval", type=count, default=EVAL_INTERVAL, metavar="INT", help="steps between estimates"
    )
    runs = parser.add_argument_group("running")
    runs.add_argument("--seeds", type=count, default=1, metavar="INT", help=f"seeds of each pair, from {FIRST_SEED}")
    runs.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        metavar="PATH",
        help="the pre-trained checkpoint (default: checkpoints/ex3_pretrained_<the text's name>.pt)",
    )
    runs.add_argument(
        "--resume", action="store_true", help="continue each fine-tuning and scratch run from its checkpoint"
    )
    return parser


def runner_command(learner_file: str) -> str:
    path = Path(learner_file).resolve()
    return f"python {path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path}"


def main(learner: ModuleType, argv: list[str]) -> None:
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else list(argv)
    if "--resume" in flags:  # "the same command plus --resume", as a stopped run says, puts it last
        flags = [f for f in flags if f != "--resume"]
        own.append("--resume")
    args = build_parser(learner).parse_args(own)
    experiment = Experiment(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Experiment) if hasattr(args, f.name)}
    )
    experiment.flags = flags
    try:
        run_experiment(learner, experiment)
    except NotImplementedError as e:  # a part of the starting file not written yet
        if "not written yet" not in str(e):
            raise
        check = "python exercises/check.py 3" + (
            "" if name_of(learner) == "ex3_pretrain" else f" --file {learner.__file__}"
        )
        raise harness.UserError(f"{e}: write it, then check it with {check}") from None


def pretrain_and_compare(learner: ModuleType, argv: list[str] | None = None) -> int:
    """`python exercises/ex3_pretrain.py [flags] [-- stage 10's flags]`: the whole experiment."""
    return harness.run_main(lambda a: main(learner, a), sys.argv[1:] if argv is None else list(argv))


def quietly(function, *args, **kwargs):
    """function's result, its printing and progress bars swallowed (the check prints one line)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args, **kwargs)


def small_experiment(learner: ModuleType, experiment: Experiment) -> dict[str, Any]:
    """run_experiment at tiny sizes, into a temporary folder, silently: for the check."""
    with tempfile.TemporaryDirectory() as folder:
        small = dataclasses.replace(experiment, checkpoint_dir=Path(folder), chart=False)
        return quietly(run_experiment, learner, small)
