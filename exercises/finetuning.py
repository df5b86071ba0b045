"""The program around exercise 6: fine-tune stage 10's pre-trained model to do a task, beside the
same model trained on the task from scratch, and the pre-trained model asked without fine-tuning.

The task: fix one typo in a line of tiny Shakespeare. The typo is two neighbouring letters swapped,
or one letter replaced, inside a word of MIN_WORD letters or more; the answer is the whole line.

The learner's file (exercises/ex6_finetune.py) writes the vocabulary with the template's marks
(vocabulary), how a prompt and its answer become one sequence (template), the batches with their
masked targets (batch) and the greedy answer (answer). This module does the rest:

  1. the pairs: fine-tuning pairs from lines of the training split (the first 90%), judging pairs
     from lines of the validation split (the last 10%), which stage 10's pre-training never trained on;
  2. for each seed: the pre-trained model, grown by a fresh row for each mark in the embedding and
     the head, fine-tuned; the same model freshly initialised, trained the same steps on the same
     batches; and the grown pre-trained model, not fine-tuned. Each answers the judging pairs;
  3. the exact-match accuracy of each, side by side, in <name>_results.json; the first seed's
     fine-tuned model in <name>.pt, for --ask.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
from tqdm import tqdm

import common
import harness
import harness.checkpoints
import harness.cli
import tools.machine
from exercises import learner_stage
from exercises.paired_test import paired_interval

STAGE_10 = learner_stage.STAGE_10
IGNORE = -100  # F.cross_entropy's default ignore_index: a target the loss leaves out
SHORTEST, LONGEST = 15, 28  # the lines of the task, in characters
MIN_WORD = 4  # a typo goes inside a word of this many letters or more
TASK_SEED = 0  # the typos are the same for every run, whatever its seed
FIRST_SEED = 1337  # the stages' default
STEPS, BATCH_SIZE = 800, 32
# Both at the cpu preset's rate, constant: the same recipe, from pre-trained weights or from nothing.
# Tried on one seed, a lower rate fine-tuned less in STEPS steps, and a higher one trained less from scratch.
FINETUNE_LR = SCRATCH_LR = 2e-3
KINDS = ("fine-tuned", "from scratch", "not fine-tuned")
SIZES = ("block_size", "n_embd", "n_head", "n_layer", "dropout")  # the model's, from the pre-trained one
PER_TOKEN = ("token_embedding_table.weight", "lm_head.weight", "lm_head.bias")  # a row for each token


# -- the task --------------------------------------------------------------------------------------


def task_lines(text: str) -> list[str]:
    """The lines of text the task uses, each once: SHORTEST to LONGEST characters, a word of MIN_WORD
    letters or more, not a speaker's name ("First Citizen:")."""
    lines = [line for line in text.split("\n") if SHORTEST <= len(line) <= LONGEST and not line.endswith(":")]
    return list(dict.fromkeys(line for line in lines if re.search(f"[A-Za-z]{{{MIN_WORD},}}", line)))


def with_typo(line: str, rng: random.Random, letters: str) -> str:
    """line with one typo in one of its long words: two neighbouring letters swapped, or a letter
    replaced by another of letters of the same case."""
    word = rng.choice(list(re.finditer(f"[A-Za-z]{{{MIN_WORD},}}", line)))
    while True:
        i = rng.randrange(word.start(), word.end() - 1)
        if rng.random() < 0.5:  # swap letters i and i + 1
            typo = line[:i] + line[i + 1] + line[i] + line[i + 2 :]
        else:  # replace letter i
            typo = line[:i] + rng.choice([ch for ch in letters if ch.isupper() == line[i].isupper()]) + line[i + 1 :]
        if typo != line:
            return typo


@dataclasses.dataclass
class Task:
    """The prompt-answer pairs: (line with a typo, line) to fine-tune on, and to judge on."""

    train: list[tuple[str, str]]
    judge: list[tuple[str, str]]


def make_task(text: str, judged: int | None = None) -> Task:
    """The pairs of text: fine-tuning from the training split's lines, judging from the validation
    split's lines that the training split never has (at most judged of them)."""
    cut = int(0.9 * len(text))  # as common.split_data splits the ids
    seen = task_lines(text[:cut])
    unseen = [line for line in task_lines(text[cut:].split("\n", 1)[-1]) if line not in set(seen)]
    rng = random.Random(TASK_SEED)
    letters = "".join(sorted({ch for ch in text if ch.isalpha()}))  # a typo writes no character the text lacks
    return Task(
        train=[(with_typo(line, rng, letters), line) for line in seen],
        judge=[(with_typo(line, rng, letters), line) for line in unseen[:judged]],
    )


# -- the models ------------------------------------------------------------------------------------


def stage_10() -> ModuleType:
    return learner_stage.stage_10_with(None)


def model_config(pretrained: harness.checkpoints.Checkpoint):
    """Stage 10's Config at the pre-trained model's sizes (its dropout too)."""
    return stage_10().Config(**{k: pretrained.config[k] for k in SIZES})


def grown(pretrained: harness.checkpoints.Checkpoint, vocab: list[str], cfg) -> torch.nn.Module:
    """The pre-trained model with a row for each token of vocab: a character's row is its pre-trained
    row, found by the character, as exercise 3 carries them; a mark's row stays freshly initialised."""
    model = stage_10().LanguageModel(len(vocab), cfg)
    old_id = {ch: i for i, ch in enumerate(pretrained.vocab)}
    kept = [(i, old_id[token]) for i, token in enumerate(vocab) if token in old_id]
    new = torch.tensor([i for i, _ in kept], dtype=torch.long)
    old = torch.tensor([j for _, j in kept], dtype=torch.long)
    with torch.no_grad():
        for name, mine in model.state_dict().items():
            if name in PER_TOKEN:
                mine[new] = pretrained.model[name][old]
            else:
                mine.copy_(pretrained.model[name])
    return model


def fresh(vocab: list[str], cfg) -> torch.nn.Module:
    return stage_10().LanguageModel(len(vocab), cfg)


def train(
    learner: ModuleType, model, task: Task, vocab: list[str], steps: int, batch_size: int, lr: float, seed: int
) -> None:
    """steps of AdamW at a constant rate lr, each on batch_size pairs drawn with seed: the loss is
    stage 10's, on the targets the learner's batch() leaves in."""
    batches = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    bar = tqdm(range(steps), desc="steps", unit="step", leave=False, file=sys.stderr)
    for _ in bar:
        picked = torch.randint(len(task.train), (batch_size,), generator=batches).tolist()
        x, y = learner.batch([task.train[i] for i in picked], vocab, model.block_size)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


@torch.no_grad()
def accuracy(learner: ModuleType, model, pairs: list[tuple[str, str]], vocab: list[str]) -> float:
    """The share of pairs whose greedy answer is the whole answer, exactly; in eval mode, no dropout."""
    model.eval()
    right = sum(learner.answer(model, prompt, vocab) == answer for prompt, answer in pairs)
    model.train()
    return right / len(pairs)


# -- the pre-trained model and the fine-tuned one ---------------------------------------------------


def pretrained_model(path: Path, text: str) -> harness.checkpoints.Checkpoint:
    """Stage 10's checkpoint at path, refused unless pre-trained from scratch on the text's characters."""
    if not path.exists():
        raise harness.UserError(
            f"no pre-trained model at {path}: pre-train stage 10 first with python stages/10_gpt.py --preset cpu"
        )
    ckpt = harness.checkpoints.load(path, STAGE_10, "--pretrained")
    chars = "".join(sorted(set(text)))
    if ckpt.vocab != chars or ckpt.init_from is not None:
        said = "was fine-tuned from another checkpoint" if ckpt.init_from else "was trained on another text"
        raise harness.UserError(
            f"--pretrained {path} {said}; the comparison needs stage 10 pre-trained from scratch on the text "
            "it fine-tunes on (tiny Shakespeare: python stages/10_gpt.py --preset cpu)"
        )
    return ckpt


def save_finetuned(path: Path, model, vocab: list[str], chars: str, cfg, steps: int) -> None:
    """The fine-tuned model as a stage 10 checkpoint, its tokens (the marks too) beside its characters."""
    ckpt = harness.checkpoints.Checkpoint(
        stage=STAGE_10,
        config=dataclasses.asdict(cfg),
        vocab=chars,
        step=steps,
        model=model.state_dict(),
        optimizer={},
        history=[],
        elapsed=0.0,
        rng={},
    )
    harness.checkpoints.write_file(path, ckpt.to_file() | {"tokens": vocab})


def load_finetuned(path: Path, command: str) -> tuple[torch.nn.Module, list[str], str]:
    """The fine-tuned model at path, in eval mode; its tokens; the characters among them."""
    if not path.exists():
        raise harness.UserError(f"no fine-tuned model at {path}: fine-tune first with {command}")
    saved = harness.checkpoints.read_file(path, STAGE_10, "--checkpoint")
    if "tokens" not in saved:
        raise harness.UserError(f"{path} is stage 10's, not a fine-tuned model with marks; give exercise 6's")
    vocab = saved["tokens"]
    model = stage_10().LanguageModel(len(vocab), stage_10().Config(**saved["config"]))
    model.load_state_dict(saved["model"])
    return model.eval(), vocab, saved["vocab"]


def ask(learner: ModuleType, path: Path, line: str, command: str) -> str:
    """The fine-tuned model's correction of line; a line it cannot read is one clear error."""
    model, vocab, chars = load_finetuned(path, command)
    if list(learner.vocabulary(chars)) != list(vocab):
        raise harness.UserError(
            f"{path} was fine-tuned with other tokens than vocabulary() gives now (its marks changed): "
            f"fine-tune again with {command}"
        )
    unknown = sorted({ch for ch in line if ch not in chars})
    if unknown:
        raise harness.UserError(
            f"--ask has character(s) the model's text never uses: {''.join(unknown)!r}; write the line with the "
            "characters of tiny Shakespeare"
        )
    room = model.block_size - len(learner.template(line, None, vocab)) - 1  # the answer's characters and the end
    if len(line) > room:
        raise harness.UserError(
            f"--ask has {len(line)} characters; the answer must fit beside it in block_size "
            f"({model.block_size}): at most {room}, and the task's lines have {SHORTEST} to {LONGEST}"
        )
    return learner.answer(model, line, vocab)


# -- the experiment --------------------------------------------------------------------------------


@dataclasses.dataclass
class Experiment:
    """What one comparison runs: the budget, the rates, the seeds, and where it reads and saves."""

    steps: int = STEPS
    batch_size: int = BATCH_SIZE
    finetune_lr: float = FINETUNE_LR
    scratch_lr: float = SCRATCH_LR
    seeds: int = 1
    judged: int | None = None  # judge on at most this many pairs; None: every one
    data: Path | None = None  # None: tiny Shakespeare
    pretrained: Path | None = None  # None: stage 10's checkpoint
    checkpoint_dir: Path | None = None  # None: harness.checkpoints.CHECKPOINT_DIR, read when it runs


def name_of(learner: ModuleType) -> str:
    """The learner file's name; the worked solution's runs never overwrite the learner's."""
    path = Path(learner.__file__)
    return path.stem + ("_solution" if path.parent.name == "solutions" else "")


def run_experiment(learner: ModuleType, experiment: Experiment) -> dict:
    """Every run of the comparison, seed by seed; the results, also written to <name>_results.json."""
    out = experiment.checkpoint_dir or harness.checkpoints.CHECKPOINT_DIR
    name = name_of(learner)
    text, where = harness.cli.load_text(experiment.data)
    pre_path = experiment.pretrained or harness.checkpoints.default_path(STAGE_10)
    pretrained = pretrained_model(pre_path, text)
    cfg = model_config(pretrained)
    vocab = learner.vocabulary(pretrained.vocab)
    task = make_task(text, experiment.judged)
    if not task.train or not task.judge:
        raise harness.UserError(
            f"{where} has too few lines of {SHORTEST} to {LONGEST} characters with a word of {MIN_WORD} letters: "
            f"{len(task.train)} in its training split, {len(task.judge)} new ones in its validation split"
        )
    longest = max(len(learner.template(p, a, vocab)) for p, a in task.train + task.judge)
    if longest - 1 > cfg.block_size:
        raise harness.UserError(
            f"--pretrained {pre_path} reads {cfg.block_size} ids at most (block_size), and the task's longest "
            f"pair in the template has {longest}: pre-train a model with a larger block_size"
        )
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"pre-trained model: {pre_path} (step {pretrained.step}); {len(task.train):,} pairs from {where.name}'s "
        f"training split to fine-tune on, {len(task.judge):,} from its validation split to judge on"
    )
    prompt, answer = task.judge[0]
    shown = "".join(
        t if t in pretrained.vocab else f"[{t}]" for t in (vocab[i] for i in learner.template(prompt, answer, vocab))
    )
    print(f"a pair: {prompt!r} -> {answer!r}; in the template, marks in brackets: {shown!r}")
    seeds = [FIRST_SEED + i for i in range(experiment.seeds)]
    found: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for seed in seeds:
        for kind in KINDS:
            torch.manual_seed(seed)  # the marks' fresh rows, and the model from scratch
            model = fresh(vocab, cfg) if kind == "from scratch" else grown(pretrained, vocab, cfg)
            if kind != "not fine-tuned":
                lr = experiment.finetune_lr if kind == "fine-tuned" else experiment.scratch_lr
                print(f"seed {seed}: {kind}, {experiment.steps} steps of {experiment.batch_size} pairs at {lr:g}")
                train(learner, model, task, vocab, experiment.steps, experiment.batch_size, lr, seed)
            found[kind].append(accuracy(learner, model, task.judge, vocab))
            print(f"seed {seed}: {kind}: {100 * found[kind][-1]:.1f}% of the judging pairs fixed exactly")
            if kind == "fine-tuned" and seed == seeds[0]:
                save_finetuned(out / f"{name}.pt", model, vocab, pretrained.vocab, cfg, experiment.steps)
                print(f'saved {out / f"{name}.pt"}: python {runner(learner)} --ask "{prompt}"')
    results = {
        "machine": tools.machine.machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "pretrained": {"path": str(pre_path), "step": pretrained.step, "config": pretrained.config},
        "pairs": {"fine-tuning": len(task.train), "judging": len(task.judge)},
        "steps": experiment.steps,
        "batch_size": experiment.batch_size,
        "rates": {"fine-tuned": experiment.finetune_lr, "from scratch": experiment.scratch_lr},
        "seeds": seeds,
        "accuracy_pct": {kind: [round(100 * a, 1) for a in found[kind]] for kind in KINDS},
    }
    print()
    print(report(results))
    path = out / f"{name}_results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {path}")
    return results


def difference(base: list[float], other: list[float]) -> str:
    """other against base, seed by seed, in points of accuracy: the mean and its 95% interval."""
    if len(base) < 2:
        return f"{other[0] - base[0]:+.1f} points; one seed, so no noise to weigh it against (use --seeds 5)"
    mean, half = paired_interval(base, other)
    shown = "shown" if abs(mean) > half else "not shown (the interval holds 0)"
    return f"{mean:+.1f} points, 95% interval {mean - half:+.1f} to {mean + half:+.1f}: a difference {shown}"


def report(results: dict) -> str:
    found = results["accuracy_pct"]
    lines = ["exact match on the judging pairs, %:", f"  {'seed':>5}" + "".join(f"  {k:>14}" for k in KINDS)]
    for i, seed in enumerate(results["seeds"]):
        lines.append(f"  {seed:>5}" + "".join(f"  {found[k][i]:>14.1f}" for k in KINDS))
    lines.append(f"  fine-tuned against from scratch: {difference(found['from scratch'], found['fine-tuned'])}")
    return "\n".join(lines)


# -- the command line ------------------------------------------------------------------------------


def runner(learner: ModuleType) -> str:
    path = Path(learner.__file__).resolve()
    return str(path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path)


def build_parser(learner: ModuleType) -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog=f"python {runner(learner)}",
        description=(learner.__doc__ or "").strip().split("\n\n")[0],
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    rate, count = harness.cli.positive(float), harness.cli.positive(int)
    parser.add_argument("--ask", metavar="LINE", help="the fine-tuned model's correction of LINE, then stop")
    parser.add_argument("--steps", type=count, default=STEPS, metavar="INT", help="steps of each training run")
    parser.add_argument("--batch_size", type=count, default=BATCH_SIZE, metavar="INT", help="pairs in a step")
    parser.add_argument("--finetune_lr", type=rate, default=FINETUNE_LR, metavar="FLOAT", help="fine-tuning's rate")
    parser.add_argument("--scratch_lr", type=rate, default=SCRATCH_LR, metavar="FLOAT", help="the rate from scratch")
    parser.add_argument("--seeds", type=count, default=1, metavar="INT", help=f"seeds, from {FIRST_SEED}")
    parser.add_argument("--judged", type=count, default=None, metavar="INT", help="judge on this many pairs at most")
    parser.add_argument("--data", type=Path, default=None, metavar="PATH", help="the text (default: tiny Shakespeare)")
    parser.add_argument(
        "--pretrained", type=Path, default=None, metavar="PATH", help="the pre-trained model (default: stage 10's)"
    )
    return parser


def main(learner: ModuleType, argv: list[str]) -> None:
    args = build_parser(learner).parse_args(argv)
    command = f"python {runner(learner)}"
    try:
        if args.ask is not None:
            path = harness.checkpoints.CHECKPOINT_DIR / f"{name_of(learner)}.pt"
            print(ask(learner, path, args.ask, command))
            return
        fields = {f.name for f in dataclasses.fields(Experiment)}
        run_experiment(learner, Experiment(**{k: v for k, v in vars(args).items() if k in fields}))
    except NotImplementedError as e:  # a part of the starting file not written yet
        if "not written yet" not in str(e):
            raise
        check = "python exercises/check.py 6" + ("" if name_of(learner) == "ex6_finetune" else f" --file {command[7:]}")
        raise harness.UserError(f"{e}: write it, then check it with {check}") from None


def finetune_and_compare(learner: ModuleType, argv: list[str] | None = None) -> int:
    """`python exercises/ex6_finetune.py [flags]`: the whole comparison, or --ask."""
    return harness.run_main(lambda a: main(learner, a), sys.argv[1:] if argv is None else list(argv))
