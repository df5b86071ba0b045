"""The exercises' shared training loop steps at the schedule's rate: with lr_decay (exercise 2's
default, exercise 3's pre-training) the optimizer warms up, then decays; without it, stays put."""

import contextlib
from types import SimpleNamespace

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

import exercises.check
import exercises.schedule
from conftest import SMALL_TEXT
from exercises import arithmetic, pretraining

SOLUTION_2 = exercises.check.EXERCISE_DIR / "solutions" / "ex2_addition.py"
TINY_2 = ["--digits", "1", "--held_out", "5", "--eval_interval", "100", "--eval_iters", "1", "--batch_size", "8"]
TINY_2 += ["--n_embd", "16", "--n_head", "2", "--n_layer", "1", "--device", "cpu"]
TINY_3 = ["--n_embd", "16", "--n_head", "2", "--n_layer", "1", "--block_size", "8", "--batch_size", "4"]
TINY_3 += ["--eval_iters", "1", "--device", "cpu", "--num_tokens", "1"]
# a pre-training text that shares no run of characters with SMALL_TEXT's validation part
CORPUS_TEXT = "".join(f"entry {i} (a word of it), as in a dictionary; see also {i % 13}.\n\n" for i in range(300))


@contextlib.contextmanager
def rates_stepped_at():
    """The learning rate each optimizer step inside the block is taken at, as the optimizer reads it."""
    rates: list[float] = []

    def before_step(optimizer, args, kwargs):
        (rate,) = {group["lr"] for group in optimizer.param_groups}  # one rate for every group
        rates.append(rate)

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        yield rates
    finally:
        handle.remove()


def scheduled(learning_rate: float, max_iters: int, warmup_iters: int) -> list[float]:
    cfg = SimpleNamespace(learning_rate=learning_rate, max_iters=max_iters, warmup_iters=warmup_iters, lr_decay=True)
    return [exercises.schedule.learning_rate_at(step, cfg) for step in range(max_iters)]


def assert_warms_up_then_decays(rates: list[float], learning_rate: float, max_iters: int, warmup_iters: int) -> None:
    assert len(rates) == max_iters, "one optimizer step a training step"
    assert rates == pytest.approx(scheduled(learning_rate, max_iters, warmup_iters)), rates
    # the shape, said without the schedule's code: up in a line to the rate, then down towards a tenth of it
    assert rates[0] == pytest.approx(learning_rate / warmup_iters)
    assert rates[warmup_iters - 1] == pytest.approx(learning_rate)
    assert all(a > b for a, b in zip(rates[warmup_iters:], rates[warmup_iters + 1 :], strict=False))
    assert learning_rate / 10 < rates[-1] < learning_rate / 5


def test_exercise_2_trains_by_default_at_a_rate_that_warms_up_then_decays(tmp_path, capsys):
    module = exercises.check.load_learner_file(SOLUTION_2)
    argv = [*TINY_2, "--max_iters", "12", "--warmup_iters", "4", "--learning_rate", "0.01"]
    with rates_stepped_at() as rates:
        code = arithmetic.train_or_ask(module, [*argv, "--checkpoint", str(tmp_path / "add.pt")])
    assert code == 0, capsys.readouterr().err
    assert_warms_up_then_decays(rates, learning_rate=0.01, max_iters=12, warmup_iters=4)


def test_exercise_2_without_lr_decay_trains_at_one_constant_rate(tmp_path, capsys):
    module = exercises.check.load_learner_file(SOLUTION_2)
    argv = [*TINY_2, "--max_iters", "6", "--learning_rate", "0.01", "--no-lr_decay"]
    with rates_stepped_at() as rates:
        code = arithmetic.train_or_ask(module, [*argv, "--checkpoint", str(tmp_path / "add.pt")])
    assert code == 0, capsys.readouterr().err
    assert rates == [0.01] * 6


def test_exercise_3_pre_trains_at_a_rate_that_warms_up_then_decays(tmp_path, capsys):
    corpus, data = tmp_path / "corpus.txt", tmp_path / "small.txt"
    corpus.write_text(CORPUS_TEXT, encoding="utf-8")
    data.write_text(SMALL_TEXT, encoding="utf-8")
    steps = 40  # the experiment warms up for a twentieth of the steps: 2
    experiment = pretraining.Experiment(corpus=corpus, data=data, pretrain_steps=steps, pretrain_lr=0.01, flags=TINY_3)
    with rates_stepped_at() as rates:
        pretraining.pretrain(experiment, corpus, tmp_path / "pre.pt")
    assert_warms_up_then_decays(rates, learning_rate=0.01, max_iters=steps, warmup_iters=pretraining.warmup(steps))
