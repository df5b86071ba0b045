"""The program around exercise 2: arithmetic problems served at random to stage 10's LanguageModel.

The learner's file (exercises/ex2_addition.py) writes how a problem becomes text (encode), which
targets the loss skips (mask_problem), how the model's answer is read (decode) and which problems
training may draw (training_problem). This module does the rest: the task and its vocabulary, the
held-out problems, batches (for a task of sums alone, sums whose carries run far served beside the
learner's problems early on: see CARRY_SHARE), training through the harness's Trainer (progress bar,
Ctrl-C, its own checkpoint), the exact-match accuracy and --ask.

    python exercises/ex2_addition.py [flags]          train, then report the held-out accuracy
    python exercises/ex2_addition.py --ask 12+345     what the trained model answers
"""

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from tqdm import tqdm

import common
import harness
import harness.checkpoints
import harness.cli
import tools.stages
from exercises import training
from exercises.schedule import Schedule
from harness.cli import pick_device

OPERATIONS = "+-*"
END = "."  # the end mark: the model writes it after the answer
IGNORE = -100  # F.cross_entropy's default ignore_index: a target it leaves out of the loss
VOCAB = "0123456789" + OPERATIONS + "=" + END  # the task's own characters, not tiny Shakespeare's
HELD_OUT_SEED = 0  # the held-out problems are the same for every run of a task, whatever --seed is
STAGE_10 = "10_gpt"
TASK_FIELDS = ("digits", "operations", "reverse", "trace", "held_out")  # what a checkpoint's model was taught
# With carry_heavy, a task of sums alone is served carrying sums (carrying_sum) beside the learner's
# problems: half of them at the start, fading to none at 40% of the steps. Served uniform sums alone, a
# model can sit on a plateau for thousands of steps before its attention finds which operand digits
# each answer digit needs; sums whose carries run far make every answer digit hang on those digits.
CARRY_SHARE, CARRY_UNTIL = 0.5, 0.4


def result(a: int, op: str, b: int) -> int:
    """What the problem's answer is: result(12, "*", 34) is 408."""
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@dataclass(frozen=True)
class Task:
    """Which problems: digits of each operand, the operations, the answer's digit order, and
    whether the worked steps of a product come before its answer."""

    digits: int = 5
    operations: str = "+"
    reverse: bool = True
    trace: bool = False

    @property
    def prompt_length(self) -> int:
        """Characters of the problem up to and including "=": 12 for "00012+00345="."""
        return 2 * self.digits + 2

    @property
    def answer_width(self) -> int:
        """Characters every answer is padded to: the widest any of the task's operations gives.
        With 5-digit operands a sum has up to 6 digits, a difference 5 and its sign, a product 10."""
        widths = {"+": self.digits + 1, "-": self.digits + 1, "*": 2 * self.digits}
        return max(widths[op] for op in self.operations)

    @property
    def trace_width(self) -> int:
        """Characters of the worked steps (see worked()): none without trace."""
        return self.digits * (self.digits + 1) if self.trace else 0

    @property
    def length(self) -> int:
        """Characters of a whole problem: the prompt, the worked steps, the answer, the end mark."""
        return self.prompt_length + self.trace_width + self.answer_width + 1


def worked(a: int, op: str, b: int, task: Task) -> str:
    """The steps written before the answer when task.trace (a chain of thought that the loss also
    trains on), else "". For a product, a times each digit of b, least significant digit first,
    each zero-padded to digits + 1 and reversed like the answer: 12*34 gives 12*4 = 048 and
    12*3 = 036, written "840630"; the answer 408 is then their sum, 48 + 360, one carry at a time.
    Sums and differences need no steps: zeros keep every problem of the task the same length."""
    if not task.trace:
        return ""
    if op != "*":
        return "0" * task.trace_width
    steps = ""
    for i in range(task.digits):
        partial = f"{a * (b // 10**i % 10):0{task.digits + 1}d}"
        steps += partial[::-1] if task.reverse else partial
    return steps


def random_problem(task: Task, generator: torch.Generator) -> tuple[int, str, int]:
    """A problem (a, op, b) drawn uniformly: each operand from 0 to 10**digits - 1."""
    a, b = torch.randint(10**task.digits, (2,), generator=generator).tolist()
    op = task.operations[torch.randint(len(task.operations), (1,), generator=generator).item()]
    return a, op, b


def carrying_sum(task: Task, generator: torch.Generator) -> tuple[int, str, int]:
    """A sum whose carries run far: in every column the two digits add up to 9 or more, so a carry
    that enters a column leaves it too, and an answer digit depends on every column to its right."""
    a = b = 0
    for column in range(task.digits):
        x = torch.randint(10, (1,), generator=generator).item()
        y = torch.randint(9 - x, 10, (1,), generator=generator).item()
        a, b = a + x * 10**column, b + y * 10**column
    return a, "+", b


def carrying_share(progress: float) -> float:
    """The share of carrying sums served at progress (the fraction of the steps done): CARRY_SHARE at
    the start, fading in a straight line to none at CARRY_UNTIL of the steps."""
    return CARRY_SHARE * max(0.0, 1 - progress / CARRY_UNTIL)


def held_out_problems(task: Task, count: int) -> list[tuple[int, str, int]]:
    """count distinct problems of each operation that training never serves, drawn once with
    HELD_OUT_SEED: the problems the accuracy is measured on."""
    generator = torch.Generator().manual_seed(HELD_OUT_SEED)
    chosen: list[tuple[int, str, int]] = []
    for op in task.operations:
        pairs: dict[tuple[int, int], None] = {}  # a dict keeps the order they were drawn in
        while len(pairs) < count:
            a, b = torch.randint(10**task.digits, (2,), generator=generator).tolist()
            pairs[a, b] = None
        chosen += [(a, op, b) for a, b in pairs]
    return chosen


@dataclass
class Config(Schedule):  # Schedule: lr_decay and warmup_iters (exercises/schedule.py)
    """The task, the model and its training: each is also a command-line flag (--digits 3)."""

    digits: int = 5  # digits of each operand, zero-padded: 12 is 00012
    operations: str = "+"  # the operations served: any of + - * (+-* is the calculator)
    reverse: bool = True  # the answer's digits least significant first, as addition is done by hand
    trace: bool = False  # write a product's partial products before its answer (a chain of thought)
    held_out: int = 1000  # problems of each operation never trained on: the accuracy's test set
    carry_heavy: bool = True  # sums alone: half of them carrying sums at first, none from 40% of the steps
    batch_size: int = 64  # problems in each step
    max_iters: int = 1000  # training steps
    eval_interval: int = 500  # steps between loss and accuracy estimates
    eval_iters: int = 10  # batches of each split averaged in one loss estimate
    learning_rate: float = 1e-3  # AdamW step size: a small model on a small task takes a large one
    n_embd: int = 128  # width of the embeddings
    n_head: int = 4  # attention heads, each of size n_embd // n_head
    n_layer: int = 2  # Transformer blocks
    dropout: float = field(default=0.0, metadata={"below": 1})  # none: served problems never repeat much
    lr_decay: bool = True  # warm up, then decay along a cosine to a tenth at max_iters

    def __post_init__(self) -> None:
        if (
            not self.operations
            or set(self.operations) - set(OPERATIONS)
            or len(set(self.operations)) < len(self.operations)
        ):
            raise ValueError(f"operations must be one or more of {OPERATIONS}, each once")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd must be divisible by n_head: each head gets n_embd // n_head")
        if self.held_out * 4 > 10 ** (2 * self.digits):  # keep three quarters of the problems to train on
            raise ValueError(
                f"held_out is more than a quarter of the {10 ** (2 * self.digits):,} problems of each operation "
                f"that digits gives"
            )

    @property
    def task(self) -> Task:
        return Task(self.digits, self.operations, self.reverse, self.trace)

    @property
    def block_size(self) -> int:  # the model reads every character of a problem but the last
        return self.task.length - 1

    def model_config(self):
        """Stage 10's Config for the model: these sizes, a context of one problem."""
        sizes = {k: getattr(self, k) for k in ("n_embd", "n_head", "n_layer", "dropout")}
        return load_stage_10().Config(block_size=self.block_size, **sizes)


def load_stage_10() -> ModuleType:
    name = f"stage_{STAGE_10}"
    return sys.modules.get(name) or tools.stages.load_stage(STAGE_10)


# -- batches ---------------------------------------------------------------------------------------


class Problems:
    """The problems of a task, encoded by the learner's file: batches to train on and to test on."""

    def __init__(self, learner: ModuleType, task: Task, held_out: int, carry_heavy: bool = False) -> None:
        self.learner, self.task = learner, task
        self.carry_heavy = carry_heavy and task.operations == "+"  # carrying sums, for a task of sums only
        self.tokenizer = common.CharTokenizer(VOCAB)
        self.test = held_out_problems(task, held_out)
        self.test_set = set(self.test)

    def ids(self, problems: list[tuple[int, str, int]]) -> torch.Tensor:
        """(B, task.length) the ids of the problems, written by the learner's encode()."""
        rows = [self.tokenizer.encode(self.learner.encode(a, op, b, self.task)) for a, op, b in problems]
        return torch.tensor(rows)

    def batch(self, problems: list[tuple[int, str, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x (B, T) and targets y (B, T), T = task.length - 1: y is x shifted by one, the
        problem's positions masked by the learner's mask_problem()."""
        ids = self.ids(problems)
        x, y = ids[:, :-1], ids[:, 1:]  # (B, T) each: y[:, t] is the character after x[:, t]
        y = self.learner.mask_problem(y.clone(), self.task)
        return x.to(device), y.to(device)

    def training(self, count: int, generator: torch.Generator, progress: float = 1.0) -> list[tuple[int, str, int]]:
        """count problems to train on at progress (the fraction of the steps done): the learner's
        training_problem's, and with carry_heavy a share of carrying sums (carrying_share), none of
        them held out."""
        share, served = carrying_share(progress) if self.carry_heavy else 0.0, []
        for _ in range(count):
            if share and torch.rand((), generator=generator).item() < share:
                problem = carrying_sum(self.task, generator)
                if problem not in self.test_set:
                    served.append(problem)
                    continue
            served.append(self.learner.training_problem(self.task, self.test_set, generator))
        return served

    def testing(self, count: int, generator: torch.Generator) -> list[tuple[int, str, int]]:
        picks = torch.randint(len(self.test), (count,), generator=generator).tolist()
        return [self.test[i] for i in picks]

    @torch.no_grad()
    def answers(self, model: torch.nn.Module, problems: list[tuple[int, str, int]], device: torch.device) -> list[str]:
        """What the model writes after each problem's "=" (its worked steps, if any, its answer and the
        end mark), greedily: top_k=1 keeps only the likeliest character each time."""
        task = self.task
        prompts = self.ids(problems)[:, : task.prompt_length].to(device)  # (B, prompt_length)
        was_training = model.training
        model.eval()
        out = model.generate(prompts, task.length - task.prompt_length, top_k=1)  # (B, task.length)
        model.train(was_training)
        return [self.tokenizer.decode(row) for row in out[:, task.prompt_length :].tolist()]

    def accuracy(self, model: torch.nn.Module, device: torch.device, chunk: int = 1000) -> dict[str, float]:
        """Exact match, by operation, on every held-out problem: the whole answer, end mark included
        (with worked steps, the answer after them: the steps may differ, the answer may not)."""
        right = {op: 0 for op in self.task.operations}
        total = {op: 0 for op in self.task.operations}
        for i in range(0, len(self.test), chunk):
            problems = self.test[i : i + chunk]
            written = self.answers(model, problems, device)
            for (a, op, b), answer in zip(problems, written, strict=True):
                expected = self.learner.encode(a, op, b, self.task)[self.task.prompt_length :]
                right[op] += answer_part(answer, self.task) == answer_part(expected, self.task)
                total[op] += 1
        return {op: right[op] / total[op] for op in right}

    @torch.no_grad()
    def estimate_loss(self, model: torch.nn.Module, cfg: Config, generator: torch.Generator, device) -> dict:
        """The answer positions' mean loss on training problems and on held-out ones."""
        model.eval()
        out = {}
        for split, draw in (("train", self.training), ("val", self.testing)):
            losses = [model(*self.batch(draw(cfg.batch_size, generator), device))[1] for _ in range(cfg.eval_iters)]
            out[split] = torch.stack(losses).mean().item()
        model.train()
        return out


def answer_part(written: str, task: Task) -> str:
    """What the model wrote after "=", without its worked steps: the answer and the end mark."""
    return written[task.trace_width :]


def accuracy_line(accuracy: dict[str, float], held_out: int) -> str:
    shown = ", ".join(f"{op} {100 * v:.1f}%" for op, v in accuracy.items())
    return f"held-out exact match ({held_out:,} problems of each operation): {shown}"


# -- the command line ------------------------------------------------------------------------------


def checkpoint_name(learner_file: str) -> str:
    """checkpoints/<the file's name>.pt; the worked solution's never overwrites the learner's."""
    name = Path(learner_file).stem
    return name + "_solution" if Path(learner_file).parent.name == "solutions" else name


def command_of(learner_file: str) -> str:
    """How the file is run: "python exercises/ex2_addition.py" (relative to the project, if inside it)."""
    path = Path(learner_file).resolve()
    return f"python {path.relative_to(common.ROOT) if path.is_relative_to(common.ROOT) else path}"


def build_parser(learner_file: str, doc: str | None) -> argparse.ArgumentParser:
    parser = harness.cli.Parser(
        prog=command_of(learner_file),
        description=(doc or "").strip().split("\n\n")[0],
        formatter_class=harness.cli.HelpFormatter,
        allow_abbrev=False,
    )
    helps = harness.cli.field_help(Config)
    group = parser.add_argument_group("the task, the model and its training")
    for f in dataclasses.fields(Config):
        if f.type is bool:
            kind = dict(action=argparse.BooleanOptionalAction)
        elif f.type is str:
            kind = dict(metavar="OPS")
        else:
            kind = dict(type=harness.cli.field_check(f), metavar=f.type.__name__.upper())
        group.add_argument(f"--{f.name}", default=f.default, help=helps.get(f.name), **kind)
    run = parser.add_argument_group("running")
    run.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto", help="where to compute")
    run.add_argument("--seed", type=harness.cli.seed, default=1337, metavar="INT", help="seed of the training draws")
    run.add_argument("--checkpoint", type=Path, default=None, metavar="PATH", help="checkpoint file")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue training from the checkpoint")
    mode.add_argument(
        "--ask", default=None, metavar="PROBLEM", help="what the trained model answers, e.g. --ask 23+45 (no training)"
    )
    parser.set_defaults(compile=None, dtype="float32")  # the Trainer's: no --compile or --dtype for a model this small
    return parser


def parse_problem(text: str, task: Task) -> tuple[int, str, int]:
    """ "23+45" -> (23, "+", 45), checked against the task the model was trained on."""
    m = re.fullmatch(r"\s*(\d+)\s*([-+*])\s*(\d+)\s*", text)
    if not m:
        raise harness.UserError(f"--ask {text!r} is not a problem: write two whole numbers and +, - or *, as 23+45")
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    if op not in task.operations:
        raise harness.UserError(
            f"--ask {text!r}: the model was trained on {' '.join(task.operations)} only; train with --operations"
        )
    if max(a, b) >= 10**task.digits:
        raise harness.UserError(
            f"--ask {text!r}: the model was trained on operands of up to {task.digits} digits; "
            "give smaller numbers, or train with a larger --digits"
        )
    return a, op, b


def train_or_ask(learner: ModuleType, argv: list[str] | None = None) -> int:
    """`python exercises/ex2_addition.py [flags]`: train, or answer --ask, with the learner's parts."""
    return harness.run_main(lambda a: main(learner, a), sys.argv[1:] if argv is None else argv)


def main(learner: ModuleType, argv: list[str]) -> None:
    name = checkpoint_name(learner.__file__)
    parser = build_parser(learner.__file__, learner.__doc__)
    args = parser.parse_args(argv)
    args.sample = args.ask is not None  # the harness's name for "only use the checkpoint"
    given = harness.cli.explicit_flags(parser, argv)
    device = pick_device(args.device)
    common.seed_everything(args.seed)
    path = args.checkpoint or harness.checkpoints.CHECKPOINT_DIR / f"{name}.pt"
    if path.resolve() == harness.checkpoints.default_path(STAGE_10).resolve():
        raise harness.UserError(f"--checkpoint {path} is stage 10's own checkpoint; give the exercise another path")
    ckpt = None
    if args.resume or args.sample:
        if not path.exists():
            raise harness.UserError(f"no checkpoint at {path}: train first with {parser.prog}")
        ckpt = harness.checkpoints.load(path, name)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    if ckpt is not None:  # the checkpoint's task, sizes and budget, except flags typed now
        changed = [k for k in TASK_FIELDS if k in given and values[k] != ckpt.config.get(k)]
        if changed:
            shown = ", ".join(f"--{k} {values[k]} here, {ckpt.config.get(k)} there" for k in changed)
            raise harness.UserError(
                f"{path} was trained on another task ({shown}): leave those flags out to use its own, "
                "or train the new task afresh into another --checkpoint"
            )
        values.update({k: v for k, v in ckpt.config.items() if k in values and k not in given})
    try:
        cfg = Config(**values)
    except ValueError as e:  # the Config's own check of how its fields fit together
        raise harness.cli.config_error(str(e), values, {}) from None
    print(f"device: {device}")
    problems = Problems(learner, cfg.task, cfg.held_out, cfg.carry_heavy)
    model = load_stage_10().LanguageModel(len(VOCAB), cfg.model_config()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    if not args.sample:
        harness.checkpoints.check_writable(path)
    # the harness's Run, with the task's problems instead of a text: the generators draw them, and a
    # checkpoint saves their states, so that a resumed run serves the problems it would have served
    run = harness.Run(
        stage=name,
        config=cfg,
        args=args,
        device=device,
        tokenizer=problems.tokenizer,
        checkpoint_path=path,
        checkpoint=ckpt,
        train_gen=torch.Generator().manual_seed(args.seed),
        eval_gen=torch.Generator(),  # the Trainer seeds it for each step from --seed and the step
    )
    trainer = harness.Trainer(run, model, optimizer)
    try:
        if args.sample:
            answer(problems, model, parse_problem(args.ask, cfg.task), device)
        else:
            train(trainer, problems, model, optimizer, cfg, run)
    except NotImplementedError as e:  # a part of the starting file not written yet
        if "not written yet" not in str(e):
            raise
        raise harness.UserError(f"{e}: write it, then check it with python exercises/check.py 2") from None


def train(trainer, problems: Problems, model, optimizer, cfg: Config, run) -> None:
    task = cfg.task
    order = "reversed" if task.reverse else "usual order"
    print(
        f"task: {task.digits}-digit {' '.join(task.operations)}, answers {order}, {task.length} characters a "
        f"problem; {len(problems.test):,} held out"
    )

    def accuracy_now(step: int) -> None:
        if 0 < step < cfg.max_iters - 1:  # none untrained; the last comes after the last step
            tqdm.write(accuracy_line(problems.accuracy(model, run.device), cfg.held_out))

    # stage 10's loss: F.cross_entropy skips the IGNORE targets that mask_problem wrote
    training.train(
        trainer,
        model,
        optimizer,
        cfg,
        batch=lambda: problems.batch(
            problems.training(cfg.batch_size, run.train_gen, trainer.step / cfg.max_iters), run.device
        ),
        estimate=lambda: problems.estimate_loss(model, cfg, run.eval_gen, run.device),
        after_estimate=accuracy_now,
    )
    if trainer.trained:
        trainer.save()
        print(f"saved {run.checkpoint_path} (step {trainer.step}, {trainer.seconds():.1f} s of training)")
    print(accuracy_line(problems.accuracy(model, run.device), cfg.held_out))
    a, op, b = problems.test[0]
    answer(problems, model, (a, op, b), run.device)


def answer(problems: Problems, model, problem: tuple[int, str, int], device) -> None:
    a, op, b = problem
    written = problems.answers(model, [problem], device)[0]
    value = problems.learner.decode(answer_part(written, problems.task), problems.task)
    truth = result(a, op, b)
    shown = "no answer" if value is None else str(value)
    verdict = "right" if value == truth else f"wrong: {a}{op}{b} is {truth}"
    held = " (a held-out problem)" if problem in problems.test_set else ""
    print(f"{a}{op}{b} = {shown}  ({verdict}; the model wrote {written!r}){held}")
