"""Exercise 2: a GPT that adds.

From the lecture: "train a GPT to do addition of two numbers, i.e. a+b=c. You may find it helpful
to predict the digits of c in reverse order, as the typical addition algorithm (that you're hoping
it learns) would proceed right to left too. [...] You may want to mask out the loss at the input
positions of a+b that just specify the problem using y=-1 in the targets (see CrossEntropyLoss
ignore_index). Does your Transformer learn to add?"

Stage 10's LanguageModel, unchanged, learns from problems served at random instead of from a
text. Each problem is one line, and every line of a task is the same length: the operands
zero-padded, the answer zero-padded and written least significant digit first, an end mark:

    00012+00345=753000.        12 + 345 = 357, as "000357" reversed

The model reads the problem and writes the answer. Write the four parts marked WRITE THIS:
encode, mask_problem, decode and training_problem. Then:

    python exercises/check.py 2                      tests each part, then trains briefly
    python exercises/ex2_addition.py                 5-digit addition, 1,000 steps
    python exercises/ex2_addition.py --ask 12345+67890
    python exercises/ex2_addition.py --no-reverse    the usual digit order, to compare
    python exercises/ex2_addition.py --digits 2 --operations +-* --trace   the calculator

The program serves carrying sums early beside your problems, so that a run does not stall on a
plateau (--no-carry_heavy serves only yours). docs/exercises.md has the measured figures, seed by
seed, with their machine, and the calculator's.

The worked solution is exercises/solutions/ex2_addition.py.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
# END: the end mark; IGNORE: the target the loss skips; result(a, op, b): the answer;
# worked(a, op, b, task): the steps a product's answer can be worked out in (--trace)
from exercises.arithmetic import (  # noqa: E402, F401
    END,
    IGNORE,
    Task,
    random_problem,
    result,
    train_or_ask,
    worked,
)


def encode(a: int, op: str, b: int, task: Task) -> str:
    """The whole problem as one line, answer and end mark included.

    Each operand zero-padded to task.digits characters, op between them, then "="; then the
    worked steps, worked(a, op, b, task) ("" unless task.trace); then result(a, op, b)
    zero-padded to task.answer_width characters (a negative one keeps its "-" in front:
    f"{-33:04d}" is "-033"), those characters reversed when task.reverse; then END.
    encode(12, "+", 345, Task(digits=5)) is "00012+00345=753000.".
    """
    # WRITE THIS
    raise NotImplementedError("encode() is not written yet")


def mask_problem(targets: torch.Tensor, task: Task) -> torch.Tensor:
    """The targets with every position whose target is a character of the problem set to IGNORE.

    targets (B, T) are the ids of B problems shifted by one: targets[:, t] is the character that
    follows position t. The first task.prompt_length characters of a problem ("00012+00345=")
    are served at random, so no model can predict them: training on them only adds noise. The
    loss should count the answer and the end mark alone. Return the (B, T) tensor.

    The lecture writes y=-1: nanoGPT's model calls F.cross_entropy(..., ignore_index=-1). Stage
    10's calls it without, and the default ignore_index is -100: IGNORE is -100, so that stage 10's
    loss needs no change.
    """
    # WRITE THIS
    raise NotImplementedError("mask_problem() is not written yet")


def decode(written: str, task: Task) -> int | None:
    """The number in what the model wrote after "=": decode("753000.", Task()) is 357.

    The answer is what comes before the first END, its characters put back in the usual order when
    task.reverse. None when it is no answer: no END, or no whole number.
    """
    # WRITE THIS
    raise NotImplementedError("decode() is not written yet")


def training_problem(task: Task, held_out: set, generator: torch.Generator) -> tuple[int, str, int]:
    """A random problem (a, op, b) to train on: never one of held_out, the problems the accuracy is
    measured on. random_problem(task, generator) draws one from all of the task's problems."""
    # WRITE THIS
    raise NotImplementedError("training_problem() is not written yet")


if __name__ == "__main__":
    sys.exit(train_or_ask(sys.modules[__name__]))
