"""Exercise 2's checks: the learner's encode, mask_problem, decode and training_problem, each on
small tasks where a slip shows, then a short training run that reports the held-out accuracy."""

from __future__ import annotations

import time
from types import ModuleType

import torch

import common
from exercises import arithmetic
from exercises.arithmetic import END, IGNORE, Task, result, worked
from exercises.checks import Check, Failed
from exercises.training import train_step

NAME = "ex2_addition"
PARTS = ("encode", "mask_problem", "decode", "training_problem")
# the tasks the checks encode: both digit orders, and the calculator's signs and widths
TASKS = (Task(3), Task(3, reverse=False), Task(2, "+-*"), Task(1, "-"), Task(2, "+*", trace=True))
# The training check: 2-digit addition, served as the program serves it (carrying sums early). A right
# answer stalls on a plateau now and then, a wrong one never learns: so a run below the bar is taken
# for a plateau and tried again with the next seed, and the check fails only when both stay below it.
# The runs that chose 1500 steps are in benchmarks/results.json ("check 2: ...").
TRAINING = dict(digits=2, held_out=500, max_iters=1500, eval_interval=1500, batch_size=64, learning_rate=3e-3)
PASS_ACCURACY = 0.95
TRIES = 2  # seeds a right answer gets to pass


def has_parts(module: ModuleType) -> None:
    missing = [name for name in PARTS if not callable(getattr(module, name, None))]
    if missing:
        raise Failed(f"the file has no {', '.join(missing)}: keep the names the exercise gives them")


def spelled(a: int, op: str, b: int, task: Task) -> str:
    """The encoding the exercise asks for, written out here to compare with."""
    answer = f"{result(a, op, b):0{task.answer_width}d}"
    answer = answer[::-1] if task.reverse else answer
    return f"{a:0{task.digits}d}{op}{b:0{task.digits}d}={worked(a, op, b, task)}{answer}{END}"


def encodes(module: ModuleType) -> None:
    samples = [(12, "+", 345), (999, "+", 999), (0, "+", 7)]
    cases = [(a, op, b, t) for t in TASKS[:2] for a, op, b in samples]
    cases += [(12, "-", 45, TASKS[2]), (99, "*", 99, TASKS[2]), (3, "-", 3, TASKS[2]), (0, "-", 9, TASKS[3])]
    cases += [(12, "*", 34, TASKS[4]), (12, "+", 34, TASKS[4])]
    for a, op, b, task in cases:
        got, want = module.encode(a, op, b, task), spelled(a, op, b, task)
        if got == want:
            continue
        shown = f"encode({a}, {op!r}, {b}, {task}) is {got!r}, not {want!r}"
        if not isinstance(got, str):
            raise Failed(f"encode() returned a {type(got).__name__}: it should return the problem as a str")
        if task.trace and got == spelled(a, op, b, Task(task.digits, task.operations, task.reverse)):
            raise Failed(f"{shown}: with task.trace, the worked steps come between '=' and the answer")
        if task.reverse and got == spelled(a, op, b, Task(task.digits, task.operations, False, task.trace)):
            raise Failed(f"{shown}: the answer is in the usual order; with task.reverse, reverse its characters")
        if not got.endswith(END):
            raise Failed(f"{shown}: it should end with END ({END!r}), the mark the model writes when done")
        if len(got) != task.length:
            raise Failed(
                f"{shown}: every problem of a task must have task.length ({task.length}) characters: "
                "pad each operand to task.digits and the answer to task.answer_width with zeros"
            )
        raise Failed(shown)


def targets_of(task: Task, count: int = 4) -> torch.Tensor:
    """(count, task.length - 1) targets of some problems, as Problems.batch makes them."""
    tokenizer = common.CharTokenizer(arithmetic.VOCAB)
    generator = torch.Generator().manual_seed(0)
    rows = [spelled(*arithmetic.random_problem(task, generator), task) for _ in range(count)]
    return torch.tensor([tokenizer.encode(r) for r in rows])[:, 1:]


def random_targets(task: Task) -> tuple[list[int], dict[int, str]]:
    """The targets that are random characters of the problem (which must be masked), and the fixed
    ones (which may be): target t is character t + 1 of "a op b =", whose characters are a's digits
    0 .. d-1, the operation d, b's digits d+1 .. 2d and "=" 2d+1. The operation is random only where
    the task serves more than one."""
    d = task.digits
    fixed = {2 * d: "the '='"}  # the target of character 2d + 1
    if len(task.operations) == 1:
        fixed[d - 1] = "the operation where only one is served"
    return [t for t in range(task.prompt_length - 1) if t not in fixed], fixed


def masks(module: ModuleType) -> str:
    left_in: dict[str, None] = {}  # the fixed characters some task's mask leaves in the loss
    for task in (Task(3), Task(2, "+-*"), Task(2, "*")):
        targets = targets_of(task)
        given = targets.clone()
        got = module.mask_problem(targets, task)
        if not isinstance(got, torch.Tensor) or got.shape != given.shape:
            raise Failed(f"mask_problem() should return a tensor of the targets' shape {tuple(given.shape)}")
        p = task.prompt_length
        where = f"(a {task.digits}-digit {task.operations} task, prompt_length {p}; targets[:, t] is character t + 1)"
        if bool(((got != given) & (got != IGNORE)).any()):
            value = got[(got != given)][0].item()
            if value == -1:
                raise Failed(
                    "the mask writes -1, which stage 10's loss does not skip (F.cross_entropy skips -100 by "
                    "default and fails on -1): write IGNORE (-100)"
                )
            raise Failed(f"mask_problem() wrote {value}, not IGNORE ({IGNORE}), into the targets")
        masked = (got == IGNORE).all(dim=0)  # (T,) the positions masked in every problem
        if not (got == IGNORE).any():
            raise Failed(f"nothing is masked {where}: the loss still trains on the problem's random characters")
        if not torch.equal(got[:, p - 1 :], given[:, p - 1 :]):  # only IGNOREs are left to differ
            first = int((got[:, p - 1 :] == IGNORE).any(dim=0).nonzero()[0]) + p - 1
            which = "the answer's first character" if first == p - 1 else "a character of the answer"
            raise Failed(
                f"target {first} is masked, but it is {which} {where}: the loss must count every character "
                "of the answer and the end mark"
            )
        random, fixed = random_targets(task)
        kept = [t for t in random if not masked[t]]
        if kept:
            raise Failed(
                f"targets {kept} are not masked {where}: they are random characters of the problem, which no "
                f"model can predict; mask every target from 0 to {p - 2} (the '=' and a lone operation may stay)"
            )
        left_in.update((fixed[t], None) for t in fixed if not masked[t])
    if not left_in:
        return "every character of the problem masked"
    return (
        f"the problem's random characters masked; {' and '.join(left_in)} left in the loss: fixed characters "
        "the model learns for free, a choice that changes nothing the accuracy measures"
    )


def decodes(module: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    for task in TASKS:
        for _ in range(20):
            a, op, b = arithmetic.random_problem(task, generator)
            written = arithmetic.answer_part(spelled(a, op, b, task)[task.prompt_length :], task)
            got = module.decode(written, task)
            if got != result(a, op, b):
                back = " (digits still reversed?)" if task.reverse and got == int(written[:-1]) else ""
                raise Failed(f"decode({written!r}, {task}) is {got!r}, not {result(a, op, b)}{back}")
    for nothing in ("357", "7+3.", ".", ""):
        try:
            got = module.decode(nothing, Task(3))
        except Exception as e:  # noqa: BLE001 (the model writes anything: decode must not raise)
            raise Failed(f"decode({nothing!r}, Task(3)) raised {type(e).__name__}: return None for no answer") from e
        if got is not None:
            raise Failed(f"decode({nothing!r}, Task(3)) is {got!r}: with no END or no number, return None")


def splits(module: ModuleType) -> None:
    task = Task(1, "+")  # 100 problems: a quarter held out, so a leak shows within a few draws
    everything = [(a, "+", b) for a in range(10) for b in range(10)]
    held_out = set(everything[::4])
    draws = []
    for seed in (0, 0):
        generator = torch.Generator().manual_seed(seed)
        draws.append([module.training_problem(task, held_out, generator) for _ in range(2000)])
    leaked = sorted({tuple(p) for p in draws[0]} & held_out)
    if leaked:
        raise Failed(
            f"training served {len(leaked)} held-out problem(s), e.g. {leaked[0]}: then the accuracy measures "
            "memory, not addition; draw again when a problem is in held_out"
        )
    if draws[0] != draws[1]:
        raise Failed(
            "two draws from generators with the same seed gave other problems: draw with the generator given "
            "(random_problem(task, generator)), so that a resumed run serves what it would have served"
        )
    missed = set(everything) - held_out - {tuple(p) for p in draws[0]}
    if missed:
        raise Failed(f"2,000 draws never served {len(missed)} of the 75 problems not held out: draw them all")


def learns(module: ModuleType, pass_accuracy: float = PASS_ACCURACY, seed: int = 0, **training) -> str:
    """Train 2-digit addition with the learner's parts from seed on, up to TRIES seeds; fail when no
    run reaches pass_accuracy on the held-out problems. A run below it is taken for a plateau that a
    right answer meets now and then (the margin is measured at TRAINING), and the next seed is tried."""
    cfg = arithmetic.Config(**{**TRAINING, **training})
    problems = arithmetic.Problems(module, cfg.task, cfg.held_out, cfg.carry_heavy)
    runs = []
    for tried in range(seed, seed + TRIES):
        accuracy, seconds = train_and_measure(problems, cfg, tried)
        runs.append(f"{100 * accuracy:.1f}% with seed {tried} ({seconds:.0f} s)")
        if accuracy >= pass_accuracy:
            break
    bar = f"{100 * pass_accuracy:.0f}%"
    what = f"exact on {cfg.held_out} held-out 2-digit problems after {cfg.max_iters} steps"
    if accuracy < pass_accuracy:
        raise Failed(
            f"{' and '.join(runs)}: {what}, below {bar} on both seeds, where a right answer reaches it; the worked "
            "solution gets 100%: look again at the mask and the digit order"
        )
    if len(runs) == 1:
        return f"{runs[0]}: {what}"
    return (
        f"{runs[-1]}: {what}; the first run stalled below {bar} ({runs[0]}), as a right answer now and then "
        "does, so the next seed was tried"
    )


def train_and_measure(problems: arithmetic.Problems, cfg: arithmetic.Config, seed: int) -> tuple[float, float]:
    """One training run from seed: (the held-out exact-match accuracy of +, the seconds it took)."""
    torch.manual_seed(seed)
    model = arithmetic.load_stage_10().LanguageModel(len(arithmetic.VOCAB), cfg.model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(cfg.max_iters):
        x, y = problems.batch(problems.training(cfg.batch_size, generator, step / cfg.max_iters), torch.device("cpu"))
        train_step(model, optimizer, cfg, step, x, y)
    return problems.accuracy(model, torch.device("cpu"))["+"], time.perf_counter() - t0


PARTS_CHECK = "has encode, mask_problem, decode and training_problem"
ENCODES = "encode writes a problem as the exercise spells it"
MASKS = "mask_problem masks the problem's random characters, never the answer"
DECODES = "decode reads an answer back, or says None"
SPLITS = "training never serves a held-out problem"
LEARNS = "learns 2-digit addition"


def checks(pass_accuracy: float = PASS_ACCURACY, **training) -> list[Check]:
    """training: Config fields for the training check, and the accuracy it must reach (the tests
    make it tiny)."""
    return [
        Check(PARTS_CHECK, has_parts),
        Check(ENCODES, encodes, needs=(PARTS_CHECK,)),
        Check(MASKS, masks, needs=(PARTS_CHECK,)),
        Check(DECODES, decodes, needs=(PARTS_CHECK,)),
        Check(SPLITS, splits, needs=(PARTS_CHECK,)),
        Check(
            LEARNS, lambda module: learns(module, pass_accuracy, **training), needs=(ENCODES, MASKS, DECODES, SPLITS)
        ),
    ]
