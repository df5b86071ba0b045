"""Exercise 2, worked: a GPT that adds.

A solution of exercises/ex2_addition.py (diff the two to see what was written). Run it as the
exercise: python exercises/solutions/ex2_addition.py [flags], into its own checkpoint.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
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
    problem = f"{a:0{task.digits}d}{op}{b:0{task.digits}d}="
    answer = f"{result(a, op, b):0{task.answer_width}d}"  # "000357", or "-033" for -33
    if task.reverse:
        answer = answer[::-1]  # least significant digit first: the order the model works it out
    return problem + worked(a, op, b, task) + answer + END


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
    masked = targets.clone()
    # targets[:, t] is character t + 1: the problem's characters 1 .. prompt_length - 1 sit at
    # t = 0 .. prompt_length - 2; from t = prompt_length - 1 on, the targets are the answer's
    masked[:, : task.prompt_length - 1] = IGNORE
    return masked


def decode(written: str, task: Task) -> int | None:
    """The number in what the model wrote after "=": decode("753000.", Task()) is 357.

    The answer is what comes before the first END, its characters put back in the usual order when
    task.reverse. None when it is no answer: no END, or no whole number.
    """
    if END not in written:
        return None
    answer = written[: written.index(END)]
    if task.reverse:
        answer = answer[::-1]
    try:
        return int(answer)
    except ValueError:  # "" or "7+3": the model wrote no number
        return None


def training_problem(task: Task, held_out: set, generator: torch.Generator) -> tuple[int, str, int]:
    """A random problem (a, op, b) to train on: never one of held_out, the problems the accuracy is
    measured on. random_problem(task, generator) draws one from all of the task's problems."""
    while True:  # the held-out problems are a small fraction: a redraw is rare
        problem = random_problem(task, generator)
        if problem not in held_out:
            return problem


if __name__ == "__main__":
    sys.exit(train_or_ask(sys.modules[__name__]))
