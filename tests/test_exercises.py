"""The exercises' checks are honest: each fails on the untouched starting file, passes on the worked
solution, and fails with its own message on the broken solutions learners write (every check but
the speed report, which judges nothing, has a mistake of its own below)."""

import json

import pytest
import torch

import exercises.check
import exercises.checks
import exercises.compare
import exercises.paired_test
import harness.errors
import tools.stages
from conftest import one_line_error, tiny_flags
from exercises import arithmetic, learner_stage
from exercises.checks import ex1, ex2, ex4

EXERCISE_1 = exercises.check.EXERCISE_DIR / f"{ex1.NAME}.py"
SOLUTION_1 = exercises.check.EXERCISE_DIR / "solutions" / f"{ex1.NAME}.py"
TINY_SPEED = dict(speed_sizes=dict(batch_size=2, block_size=8, n_embd=24, n_head=3, n_layer=1), speed_steps=1)


def outcomes(path, only: str | None = None) -> dict[str, exercises.check.Outcome]:
    """Exercise 1's outcomes on the file at path, by check name; only: that check and what it needs."""
    checks = ex1.checks(**TINY_SPEED)
    if only is not None:
        wanted = {only}
        for check in reversed(checks):
            if check.name in wanted:
                wanted |= set(check.needs)
        checks = [c for c in checks if c.name in wanted]
    module = exercises.check.load_learner_file(path)
    return {o.name: o for o in exercises.check.run_checks(checks, module, path)}


def broken(tmp_path, *replacements: tuple[str, str]):
    """The worked solution with a learner's mistake written into it."""
    source = SOLUTION_1.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / f"{ex1.NAME}.py"
    path.write_text(source, encoding="utf-8")
    return path


def test_every_check_fails_on_the_untouched_starting_file():
    results = outcomes(EXERCISE_1)
    assert len(results) == len(ex1.checks())
    assert all(o.status in ("FAILED", "not run") for o in results.values()), results
    first = results[ex1.SHAPE]
    assert first.status == "FAILED" and "not written yet: CausalSelfAttention.forward" in first.message
    assert all("to pass first" in o.message for o in results.values() if o.status == "not run")


@pytest.mark.parametrize("variant", ["by hand", "scaled_dot_product_attention"])
def test_every_check_passes_on_the_worked_solution(variant, tmp_path):
    path = SOLUTION_1 if variant == "by hand" else broken(tmp_path)
    if variant != "by hand":
        path.write_text(path.read_text() + "\nCausalSelfAttention = CausalSelfAttentionSDPA\n")
    results = outcomes(path)
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}
    assert "ms a training step per head" in results["speed"].message


LOOPED_HEADS = """

class CausalSelfAttention(CausalSelfAttention):
    \"\"\"The heads one after another: each slices its rows of the query, key and value weights.\"\"\"

    def forward(self, x):
        B, T, C = x.shape
        hs, outs = self.head_size, []
        for h in range(self.n_head):
            rows = slice(h * hs, (h + 1) * hs)
            q = F.linear(x, self.query.weight[rows])  # (B, T, hs)
            k = F.linear(x, self.key.weight[rows])
            v = F.linear(x, self.value.weight[rows])
            wei = q @ k.transpose(-2, -1) * hs**-0.5  # (B, T, T)
            wei = wei.masked_fill(self.tril[0, 0, :T, :T] == 0, float("-inf"))
            wei = self.attn_dropout(F.softmax(wei, dim=-1))
            outs.append(wei @ v)  # (B, T, hs)
        return self.resid_dropout(self.proj(torch.cat(outs, dim=-1)))  # (B, T, C)
"""
EINSUM = (
    "        wei = q @ k.transpose(-2, -1) * hs**-0.5  #",
    '        wei = torch.einsum("bhqd,bhkd->bhqk", q, k) * hs**-0.5  #',
)


def test_heads_computed_one_by_one_fail_only_the_check_that_asks_for_them_together(tmp_path):
    path = broken(tmp_path)
    path.write_text(path.read_text() + LOOPED_HEADS)
    results = outcomes(path)
    together = results["every head at once: the heads as a batch dimension"]
    assert together.status == "FAILED", together
    assert "4 attention products with 2 heads and 16 with 8" in together.message
    assert "every head at once" in together.message
    others = {n: o for n, o in results.items() if n != together.name}
    assert all(o.status == "passed" for o in others.values()), {n: o.message for n, o in others.items()}


def test_an_einsum_form_computes_the_heads_together(tmp_path):
    results = outcomes(broken(tmp_path, EINSUM))
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}


MASK = '        wei = wei.masked_fill(self.tril[:, :, :T, :T] == 0, float("-inf"))  # hide the future\n'
ATTN_DROPOUT = "        wei = self.attn_dropout(wei)  # randomly cut some of the communication\n"
SPLIT = ".view(B, T, nh, hs).transpose(1, 2)"
PUT_BACK = (  # the end of the by-hand forward
    "        out = out.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh * hs)\n"
    "        return self.resid_dropout(self.proj(out))  # (B, T, C)\n\n\nclass"
)

MISTAKES = {
    "a mask that lets the future in": (
        [(MASK, "")],
        "causal: no output depends on a later position",
        "output changes when position 7's input does: your mask lets the future in",
    ),
    "the same, seen against stage 10": (
        [(MASK, "")],
        ex1.OUTPUTS,
        "the last position agrees and the others do not: your mask lets the future in",
    ),
    "the scale by n_embd": ([("* hs**-0.5", "* C**-0.5")], ex1.OUTPUTS, "your scores are scaled by n_embd**-0.5"),
    "heads mixed by a reshape without the transpose": (
        [(SPLIT, ".view(B, nh, T, hs)")],
        ex1.OUTPUTS,
        "one place to look is the split into heads and back",
    ),
    "dropout live in eval mode": (
        [(ATTN_DROPOUT, "        wei = F.dropout(wei, self.attn_dropout.p, training=True)\n")],
        "no dropout in eval mode",
        "in eval mode dropout still acts",
    ),
    "dropout at half the rate": (
        [(ATTN_DROPOUT, "        wei = F.dropout(wei, self.attn_dropout.p / 2, self.training)\n")],
        "dropout on the attention weights, at the configured rate",
        "of the attention weights are dropped where the configured rate is 30%",
    ),
    "no dropout on the attention weights": (
        [(ATTN_DROPOUT, "")],
        "dropout on the attention weights, at the configured rate",
        "in training no attention weight is dropped",
    ),
    "dropout on the heads' outputs instead of the weights": (
        [(ATTN_DROPOUT, ""), ("        out = wei @ v  #", "        out = self.attn_dropout(wei @ v)  #")],
        "dropout on the attention weights, at the configured rate",
        "dropout zeroes single numbers of what the heads give, not whole attention weights",
    ),
    "dropout before the projection": (
        [
            (
                "return self.resid_dropout(self.proj(out))  # (B, T, C)\n\n\nclass",
                "return self.proj(self.resid_dropout(out))\n\n\nclass",
            )
        ],
        "dropout after the projection, at the configured rate",
        "apply self.resid_dropout to what self.proj returns",
    ),
    "the heads not put back side by side": (
        [(PUT_BACK, "        return out  # (B, nh, T, hs)\n\n\nclass")],
        ex1.SHAPE,
        "forward returns (2, 3, 8, 8), not (B, T, C)",
    ),
    "the input detached from the graph": (
        [
            (
                "        nh, hs = self.n_head, self.head_size\n        # split",
                "        x = x.detach()\n        nh, hs = self.n_head, self.head_size\n        # split",
            )
        ],
        "same input gradients",
        "no gradient reaches the input",
    ),
    "a dropout rate written into the code": (
        [(ATTN_DROPOUT, "        wei = F.dropout(wei, 0.2, self.training)\n")],
        "stage 10's model trains the same with it",
        "does something drop at a rate of its own",
    ),
    "the same, at the checked rate": (
        [(ATTN_DROPOUT, "        wei = F.dropout(wei, 0.2, self.training)\n")],
        "dropout on the attention weights, at the configured rate",
        "where the configured rate is 30%",
    ),
    "weights detached from the graph": (
        [("q = self.query(x).view(", "q = F.linear(x, self.query.weight.detach()).view(")],
        ex1.GRADIENTS,
        "self.query.weight gets no gradient, though the output matches",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_fails_its_check_with_its_own_message(mistake, tmp_path):
    replacements, check, message = MISTAKES[mistake]
    results = outcomes(broken(tmp_path, *replacements), only=check)
    assert results[check].status == "FAILED", results[check]
    assert message in results[check].message, results[check].message


def test_the_detached_weights_still_give_the_same_outputs(tmp_path):
    """What makes that mistake hard to see: only the parameter gradients tell."""
    replacements, _, _ = MISTAKES["weights detached from the graph"]
    results = outcomes(broken(tmp_path, *replacements), only=ex1.OUTPUTS)
    assert results[ex1.OUTPUTS].status == "passed"


def test_an_exception_in_the_learners_code_names_its_file_and_line(tmp_path):
    path = broken(
        tmp_path,
        (
            "        nh, hs = self.n_head, self.head_size\n        # split",
            "        nh, hs = 1 // 0, 0\n        # split",
        ),
    )
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "1 // 0" in text)
    first = outcomes(path)[ex1.SHAPE]
    assert first.status == "FAILED"
    assert (
        first.message
        == f"your code raised ZeroDivisionError at {path.name} line {line}: integer division or modulo by zero"
    )


def test_a_syntax_error_is_one_line_with_the_file_and_line(tmp_path, capsys):
    path = broken(tmp_path, ("        B, T, C = x.shape\n        nh, hs", "        B, T, C = x.shape(\n        nh, hs"))
    code = exercises.check.main(["1", "--file", str(path)])
    _, err = capsys.readouterr()
    one_line_error(code, err, f"{path} cannot be imported: a syntax error at {path.name} line")


def test_the_command_exits_1_on_the_starting_file_and_0_on_the_solution(capsys, monkeypatch):
    monkeypatch.setattr(ex1, "CPU_SIZES", TINY_SPEED["speed_sizes"])
    assert exercises.check.main(["1"]) == 1
    out, _ = capsys.readouterr()
    assert " FAILED  shape: (B, T, C) in and out: not written yet" in out and out.rstrip().endswith(
        "0 of 11 checks passed"
    )
    assert exercises.check.main(["1", "--file", str(SOLUTION_1)]) == 0
    out, _ = capsys.readouterr()
    assert out.rstrip().endswith("all 11 checks passed")
    code = exercises.check.main(["1", "--file", "no/such/file.py"])
    _, err = capsys.readouterr()
    one_line_error(code, err, "no exercise file at no/such/file.py")


def test_the_solution_trains_stage_10_into_its_own_checkpoint(small_text_file, tmp_path, capsys):
    solution = exercises.check.load_learner_file(SOLUTION_1)
    stage = learner_stage.stage_10_with(solution.CausalSelfAttention)
    ckpt = tmp_path / "ex1.pt"
    flags = tiny_flags(stage) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)]
    assert learner_stage.train_stage_10_with(solution.CausalSelfAttention, str(SOLUTION_1), flags) == 0, (
        capsys.readouterr()
    )
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 20 and any(".sa.query.weight" in k for k in saved["model"])
    assert "no run of stage 10 to compare with" in capsys.readouterr().out

    own = harness.checkpoints.default_path("10_gpt")
    code = learner_stage.train_stage_10_with(solution.CausalSelfAttention, str(SOLUTION_1), ["--checkpoint", str(own)])
    one_line_error(code, capsys.readouterr().err, "is stage 10's own checkpoint")


def test_sampling_before_training_names_the_exercise_to_run(tmp_path, capsys):
    solution = exercises.check.load_learner_file(SOLUTION_1)
    argv = ["--sample", "--checkpoint", str(tmp_path / "none.pt")]
    code = learner_stage.train_stage_10_with(solution.CausalSelfAttention, str(SOLUTION_1), argv)
    one_line_error(code, capsys.readouterr().err, "no checkpoint at", f"train first with python {SOLUTION_1}")


def test_the_starting_file_asks_to_be_written_before_it_trains(small_text_file, tmp_path, capsys):
    start = exercises.check.load_learner_file(EXERCISE_1)
    stage = learner_stage.stage_10_with(start.CausalSelfAttention)
    flags = tiny_flags(stage) + ["--data", str(small_text_file), "--checkpoint", str(tmp_path / "c.pt")]
    code = learner_stage.train_stage_10_with(start.CausalSelfAttention, str(EXERCISE_1), flags)
    one_line_error(
        code, capsys.readouterr().err, "not written yet: CausalSelfAttention.forward", "python exercises/check.py 1"
    )
    assert code == harness.errors.EXIT_USER_ERROR


# -- exercise 4: a variant of stage 10, checked and compared ---------------------------------------

EXERCISE_4 = exercises.check.EXERCISE_DIR / "ex4_variant.py"
SOLUTIONS_4 = sorted((exercises.check.EXERCISE_DIR / "solutions").glob("ex4_*.py"))
PRESET_STEPS = learner_stage.stage_10_with(None).PRESETS["cpu"]["max_iters"]
LONGER = (f"        max_iters={PRESET_STEPS},\n", f"        max_iters={3 * PRESET_STEPS},  # trains longer\n")
LOOP = '        xb, yb = common.get_batch(run.data["train"], cfg.batch_size, cfg.block_size, run.train_gen)\n'
ACCUMULATE = "        xb, yb = torch.cat([xb, x2]), torch.cat([yb, y2])  # two batches in one step\n"
TINY_BUDGET = ["--max_iters", "6", "--eval_interval", "3", "--eval_iters", "2", "--batch_size", "4"]
TINY_BUDGET += ["--block_size", "8", "--n_embd", "16", "--n_head", "2", "--n_layer", "1", "--device", "cpu"]


def variant(tmp_path, name: str, *replacements: tuple[str, str]):
    """exercises/ex4_variant.py with a learner's change written into it, as tmp_path/name."""
    source = EXERCISE_4.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def outcomes_4(path) -> dict:
    return {o.name: o for o in exercises.check.check_exercise(4, path)}


def outcome_4(path, name: str) -> exercises.check.Outcome:
    """One of check 4's checks on the file at path, after the checks it needs, and no other."""
    checks, wanted = ex4.checks(), {name}
    for check in reversed(checks):
        if check.name in wanted:
            wanted |= set(check.needs)
    module = exercises.check.load_learner_file(path)
    outcomes = exercises.check.run_checks([c for c in checks if c.name in wanted], module, path)
    return {o.name: o for o in outcomes}[name]


def test_check_4_fails_on_the_untouched_starting_file():
    differs = outcome_4(EXERCISE_4, "differs from stage 10")
    assert differs.status == "FAILED" and "no change from stage 10 yet" in differs.message


REACH = "the change reaches the runs compare.py makes"
BUDGET = "trains at stage 10's budget (its Config, its preset, its loop)"


def test_a_change_the_cpu_preset_overrides_does_not_reach_the_compared_runs(tmp_path):
    wider = ("    n_embd: int = 384  #", "    n_embd: int = 512  #")  # the cpu preset sets n_embd 128 over it
    reach = outcome_4(variant(tmp_path, "ex4_wider.py", wider), REACH)
    assert reach.status == "FAILED", reach
    assert "the Config's defaults only (n_embd 512 here, 384 in stage 10, the preset's 128)" in reach.message
    assert "change the value in PRESETS['cpu'] instead" in reach.message


def test_a_change_to_another_preset_only_does_not_reach_the_compared_runs_and_is_told_so(tmp_path):
    video = ('    "video": {},\n', '    "video": {"dropout": 0.3},\n')
    reach = outcome_4(variant(tmp_path, "ex4_video.py", video), REACH)
    assert reach.status == "FAILED" and "a change to another preset shows nothing there" in reach.message, reach
    assert "Config's defaults" not in reach.message


def test_clipping_that_a_few_steps_never_trigger_is_a_change_that_reaches_the_runs(tmp_path):
    """Clipping at 1.0 acts only when the gradient's norm passes 1.0, which the check's few short steps
    do not reach: the weights end as stage 10's, the code the runs execute is another."""
    clip = (
        "        optimizer.step()\n",
        "        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n        optimizer.step()\n",
    )
    path = variant(tmp_path, "ex4_clip.py", clip)
    module = exercises.check.load_learner_file(path)
    stage = learner_stage.stage_10_with(None)
    assert ex4.same_weights(ex4.short_run(stage).weights, ex4.short_run(module).weights)  # the condition unmet
    reach = outcome_4(path, REACH)
    assert reach.status == "passed" and "acts only under some conditions" in reach.message, reach


@pytest.mark.parametrize(
    "name, change",
    [
        (
            "gradient clipping",
            (
                "        optimizer.step()\n",
                "        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)\n        optimizer.step()\n",
            ),
        ),
        (
            "weight decay on the matrices only",
            (
                "torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, fused=True)",
                "torch.optim.AdamW([{'params': [p for p in model.parameters() if p.dim() >= 2], 'weight_decay': 0.1},"
                " {'params': [p for p in model.parameters() if p.dim() < 2], 'weight_decay': 0.0}],"
                " lr=cfg.learning_rate, fused=True)",
            ),
        ),
    ],
)
def test_a_change_to_how_it_trains_is_a_change_compare_can_measure(tmp_path, name, change):
    reach = outcome_4(variant(tmp_path, "ex4_" + name.replace(" ", "_") + ".py", change), REACH)
    assert reach.status == "passed", reach
    assert reach.message == "a change to how it trains: the same model, other weights after a few steps"


@pytest.mark.parametrize(
    "name, change, said",
    [
        (
            "two batches a step",
            (LOOP, LOOP + LOOP.replace("xb, yb", "x2, y2") + ACCUMULATE),
            "drew 6 batches of text to train on (12,288 characters) where stage 10 draws 3 (6,144)",
        ),
        (
            "a larger batch in the loop",
            (LOOP, LOOP.replace("cfg.batch_size, cfg.block_size", "2 * cfg.batch_size, cfg.block_size")),
            "drew 3 batches of text to train on (12,288 characters) where stage 10 draws 3 (6,144)",
        ),
        (
            "the val split trained on too",
            (LOOP, LOOP + LOOP.replace('run.data["train"]', 'run.data["val"]')),
            "drew 6 batches of text to train on (12,288 characters) where stage 10 draws 3 (6,144)",
        ),
    ],
)
def test_a_loop_that_trains_on_more_than_stage_10_is_refused(tmp_path, name, change, said):
    budget = outcome_4(variant(tmp_path, "ex4_" + name.replace(" ", "_") + ".py", change), BUDGET)
    assert budget.status == "FAILED", budget
    assert said is None or said in budget.message, budget.message


def test_a_changed_docstring_or_comment_is_no_change(tmp_path):
    edits = [
        ('"""One head of self-attention."""', '"""One head: my notes."""'),
        ("(B, T, T) hide the future", "(B, T, T) no peeking"),
    ]
    differs = outcome_4(variant(tmp_path, "ex4_notes.py", *edits), "differs from stage 10")
    assert differs.status == "FAILED" and "no change from stage 10 yet" in differs.message


def test_check_4_fails_on_a_variant_that_trains_longer_or_breaks_training(tmp_path):
    budget = outcome_4(variant(tmp_path, "ex4_longer.py", LONGER), BUDGET)
    said = f"max_iters {3 * PRESET_STEPS} here, {PRESET_STEPS} in stage 10"
    assert budget.status == "FAILED" and said in budget.message, budget
    inverted = ("self.tril[:T, :T] == 0", "self.tril[:T, :T] == 1")  # the mask hides the past instead
    trains = outcome_4(variant(tmp_path, "ex4_inverted.py", inverted), "builds and trains without nan")
    assert trains.status == "FAILED" and "the loss became nan at step 0" in trains.message, trains


@pytest.mark.parametrize("solution", SOLUTIONS_4, ids=lambda p: p.stem)
def test_check_4_passes_on_each_solution(solution):
    results = outcomes_4(solution)
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}


def test_compare_gives_the_same_losses_for_the_same_code_and_seed(small_text_file, tmp_path, capsys):
    stage_10 = tools.stages.STAGE_DIR / "10_gpt.py"
    argv = [str(stage_10), str(EXERCISE_4), "--seeds", "2", "--out", str(tmp_path / "cmp")]
    assert exercises.compare.main([*argv, "--", *TINY_BUDGET, "--data", str(small_text_file)]) == 0
    out = capsys.readouterr().out
    assert "[run 4 of 4] " in out
    row = next(line for line in out.splitlines() if line.startswith(str(EXERCISE_4)))
    assert "no difference shown: +0.0000" in row
    runs = json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"]
    assert runs[str(stage_10)] == runs[str(EXERCISE_4)] and runs[str(stage_10)][0] != runs[str(stage_10)][1]
    assert sorted(p.name for p in (tmp_path / "cmp").glob("*.pt")) == [
        "10_gpt.seed1337.pt",
        "10_gpt.seed1338.pt",
        "ex4_variant.seed1337.pt",
        "ex4_variant.seed1338.pt",
    ]


def test_compare_refuses_two_budgets_in_one_line(tmp_path, capsys):
    longer = variant(tmp_path, "ex4_longer.py", LONGER)
    code = exercises.compare.main([str(tools.stages.STAGE_DIR / "10_gpt.py"), str(longer), "--out", str(tmp_path)])
    said = f"trains at another budget (max_iters {3 * PRESET_STEPS} in ex4_longer, {PRESET_STEPS} in 10_gpt)"
    one_line_error(code, capsys.readouterr().err, said)


@pytest.mark.parametrize(
    "other, said",
    [
        ([1.50, 1.51, 1.52], "better: 0.0500 lower (95% interval -0.0500 to -0.0500)"),
        ([1.60, 1.61, 1.62], "worse: 0.0500 higher (95% interval +0.0500 to +0.0500)"),
        # d = -0.02, -0.01, 0.00: mean -0.01, sd 0.01, half-width t(2) * 0.01 / sqrt(3) = 4.303 * 0.00577
        ([1.53, 1.55, 1.57], "no difference shown: -0.0100 (95% interval -0.0348 to +0.0148, which holds 0)"),
        ([1.54, 1.56, 1.57], "no difference shown: -0.0033 (95% interval -0.0177 to +0.0110, which holds 0)"),
        ([1.56], "one seed: no noise to weigh the difference against (use --seeds 3)"),
    ],
    ids=["better", "worse", "the pairs disagree", "within the noise", "one seed"],
)
def test_the_verdict_is_a_paired_t_test_seed_by_seed(other, said):
    baseline = [1.55, 1.56, 1.57][: len(other)]
    assert exercises.paired_test.verdict(baseline, other) == said


def test_pairing_sees_a_small_steady_gain_that_the_spread_between_seeds_would_hide():
    """Seeds far apart, each one 0.01 better: the means differ by less than the spread, the pairs all agree."""
    baseline, other = [1.50, 1.60, 1.70], [1.49, 1.588, 1.691]  # d = -0.010, -0.012, -0.009
    mean, half = exercises.paired_test.paired_interval(baseline, other)
    assert mean == pytest.approx(-0.0103333, abs=1e-6)
    assert half == pytest.approx(4.303 * 0.0015275 / 3**0.5, rel=1e-3)
    assert exercises.paired_test.verdict(baseline, other).startswith("better: 0.0103 lower")


def test_how_many_seeds_resolve_a_difference_of_0_01():
    """sd 0.01 of the paired differences: t(n-1) * 0.01 / sqrt(n) first reaches 0.01 at n = 7 (2.447 / 2.646)."""
    assert exercises.paired_test.seeds_to_resolve([0.0, 0.0, 0.0], [-0.01, 0.0, 0.01]) == 7
    assert exercises.paired_test.seeds_to_resolve([0.0, 0.0], [0.0, 0.0]) == 2  # no spread: any two seeds
    assert (
        exercises.paired_test.t_95(2) == 4.303 and exercises.paired_test.t_95(11) == 2.228
    )  # between rows: the larger t


# -- exercise 2: a GPT that adds -------------------------------------------------------------------

EXERCISE_2 = exercises.check.EXERCISE_DIR / "ex2_addition.py"
SOLUTION_2 = exercises.check.EXERCISE_DIR / "solutions" / "ex2_addition.py"
TINY_TRAINING = dict(max_iters=3, held_out=20, batch_size=8, n_embd=16, n_head=2, n_layer=1)
MASKED = "    masked[:, : task.prompt_length - 1] = IGNORE\n"
ENCODED = "    return problem + worked(a, op, b, task) + answer + END\n"
MISTAKES_2 = {  # mistake: (what the learner wrote instead, the check that fails, what it says)
    "the digits not reversed": (
        ("        answer = answer[::-1]  #", "        answer = answer  #"),
        ex2.ENCODES,
        "the answer is in the usual order; with task.reverse, reverse its characters",
    ),
    "no end mark": (
        (ENCODED, "    return problem + worked(a, op, b, task) + answer\n"),
        ex2.ENCODES,
        "it should end with END ('.')",
    ),
    "the worked steps left out": (
        (ENCODED, "    return problem + answer + END\n"),
        ex2.ENCODES,
        "with task.trace, the worked steps come between '=' and the answer",
    ),
    "the answer not padded": (
        ('    answer = f"{result(a, op, b):0{task.answer_width}d}"', '    answer = f"{result(a, op, b)}"'),
        ex2.ENCODES,
        "every problem of a task must have task.length",
    ),
    "the problem left unmasked": ((MASKED, ""), ex2.MASKS, "nothing is masked"),
    "masked with the lecture's -1": (
        (MASKED, MASKED.replace("IGNORE", "-1")),
        ex2.MASKS,
        "the mask writes -1, which stage 10's loss does not skip",
    ),
    "one target too many masked": (
        (MASKED, MASKED.replace("prompt_length - 1", "prompt_length")),
        ex2.MASKS,
        "but it is the answer's first character",
    ),
    "a random digit left in the loss": (
        (MASKED, MASKED.replace("[:, :", "[:, 1:")),
        ex2.MASKS,
        "targets [0] are not masked (a 3-digit + task",
    ),
    "the operation left in the loss where three are served": (
        (MASKED, MASKED + "    masked[:, task.digits - 1] = targets[:, task.digits - 1]\n"),
        ex2.MASKS,
        "targets [1] are not masked (a 2-digit +-* task",
    ),
    "the mask written for 5 digits only": ((MASKED, "    masked[:, :11] = IGNORE\n"), ex2.MASKS, "is masked, but"),
    "the answer not reversed back": (
        ("    if task.reverse:\n        answer = answer[::-1]\n    try:", "    try:"),
        ex2.DECODES,
        "(digits still reversed?)",
    ),
    "decode raises on no number": (
        ("    except ValueError:  #", "    except TypeError:  #"),
        ex2.DECODES,
        "raised ValueError: return None for no answer",
    ),
    "a split that leaks": (
        ("        if problem not in held_out:\n", "        if True:\n"),
        ex2.SPLITS,
        "training served",
    ),
    "draws not from the generator": (
        ("        problem = random_problem(task, generator)\n", "        problem = random_problem(task, None)\n"),
        ex2.SPLITS,
        "two draws from generators with the same seed gave other problems",
    ),
}


def outcomes_2(path, only: str | None = None, **training) -> dict[str, exercises.check.Outcome]:
    """Exercise 2's outcomes on the file at path, the training check tiny; only: that check and the first."""
    module = exercises.check.load_learner_file(path)
    checks = ex2.checks(**{"pass_accuracy": 0.0, **TINY_TRAINING, **training})
    if only is not None:
        checks = [c for c in checks if c.name in (ex2.PARTS_CHECK, only)]
    return {o.name: o for o in exercises.check.run_checks(checks, module, path)}


def broken_2(tmp_path, *replacements: tuple[str, str]):
    source = SOLUTION_2.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / "ex2_addition.py"
    path.write_text(source, encoding="utf-8")
    return path


def test_check_2_fails_on_the_untouched_starting_file():
    results = outcomes_2(EXERCISE_2)
    assert results[ex2.PARTS_CHECK].status == "passed"
    for name in (ex2.ENCODES, ex2.MASKS, ex2.DECODES, ex2.SPLITS):
        assert results[name].status == "FAILED" and "is not written yet" in results[name].message, results[name]
    assert results[ex2.LEARNS].status == "not run"


def test_check_2_passes_on_the_worked_solution():
    results = outcomes_2(SOLUTION_2)
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}
    assert "exact on 20 held-out 2-digit problems after 3 steps" in results[ex2.LEARNS].message


@pytest.mark.parametrize("mistake", list(MISTAKES_2))
def test_each_exercise_2_mistake_fails_its_check_with_its_own_message(mistake, tmp_path):
    replacements, check, message = MISTAKES_2[mistake]
    results = outcomes_2(broken_2(tmp_path, replacements), only=check)
    assert results[check].status == "FAILED", results[check]
    assert message in results[check].message, results[check].message


def test_the_training_check_fails_below_its_accuracy(tmp_path):
    results = outcomes_2(SOLUTION_2, pass_accuracy=1.01)
    assert results[ex2.LEARNS].status == "FAILED"
    assert "look again at the mask and the digit order" in results[ex2.LEARNS].message


def test_a_right_answer_that_learns_late_gets_a_second_seed_and_a_wrong_one_fails_both(monkeypatch):
    module = exercises.check.load_learner_file(SOLUTION_2)
    accuracies = iter([0.78, 1.0])  # the first run stalls in a plateau, the second learns
    monkeypatch.setattr(ex2, "train_and_measure", lambda problems, cfg, seed: (next(accuracies), 1.0))
    said = ex2.learns(module, **TINY_TRAINING)
    assert said.startswith("100.0% with seed 1 (1 s): exact on 20 held-out")
    assert "the first run stalled below 95% (78.0% with seed 0 (1 s)), as a right answer now and then does" in said
    assert "so the next seed was tried" in said
    seeds = []
    monkeypatch.setattr(ex2, "train_and_measure", lambda problems, cfg, seed: (seeds.append(seed) or 0.1, 1.0))
    with pytest.raises(exercises.checks.Failed, match="10.0% with seed 0 .* and 10.0% with seed 1 .* on both seeds"):
        ex2.learns(module, **TINY_TRAINING)
    assert seeds == [0, 1]
    monkeypatch.setattr(ex2, "train_and_measure", lambda problems, cfg, seed: (seeds.append(seed) or 1.0, 1.0))
    assert ex2.learns(module, **TINY_TRAINING).startswith("100.0% with seed 0 (1 s): exact")  # one run is enough
    assert seeds == [0, 1, 0]


def test_the_held_out_problems_are_fixed_distinct_and_never_served():
    task = arithmetic.Task(2, "+-*")
    first, again = arithmetic.held_out_problems(task, 50), arithmetic.held_out_problems(task, 50)
    assert first == again and len(set(first)) == 150
    assert {op for _, op, _ in first} == set("+-*")
    solution = exercises.check.load_learner_file(SOLUTION_2)
    problems = arithmetic.Problems(solution, task, 50)
    served = problems.training(3000, torch.Generator().manual_seed(0))
    assert not set(served) & problems.test_set


def carries_far(problem: tuple[int, str, int], digits: int) -> bool:
    """Every column's two digits add up to 9 or more: a carry that enters a column leaves it."""
    a, op, b = problem
    return op == "+" and all(a // 10**i % 10 + b // 10**i % 10 >= 9 for i in range(digits))


def test_a_carrying_sum_carries_through_every_column():
    generator = torch.Generator().manual_seed(0)
    sums = [arithmetic.carrying_sum(arithmetic.Task(5), generator) for _ in range(300)]
    assert all(carries_far(p, 5) and max(p[0], p[2]) < 10**5 for p in sums)
    assert len(set(sums)) == 300  # drawn, not one fixed sum


def test_carrying_sums_are_served_early_then_fade_and_are_never_held_out():
    solution = exercises.check.load_learner_file(SOLUTION_2)
    task = arithmetic.Task(5)
    problems = arithmetic.Problems(solution, task, 50, carry_heavy=True)
    early = problems.training(2000, torch.Generator().manual_seed(0), progress=0.0)
    # half carrying sums, and 0.55**5 of the others carry far by chance: 0.525 in all
    assert 0.49 < sum(carries_far(p, 5) for p in early) / 2000 < 0.56
    assert not set(early) & problems.test_set
    assert arithmetic.carrying_share(0.2) == 0.25 and arithmetic.carrying_share(0.4) == 0.0
    late = problems.training(100, torch.Generator().manual_seed(1), progress=0.5)
    generator = torch.Generator().manual_seed(1)
    assert late == [solution.training_problem(task, problems.test_set, generator) for _ in range(100)]


def test_at_two_digits_a_carrying_sum_that_is_held_out_is_never_served():
    """At 2 digits, as check 2 trains, a fifth of the carrying sums are held out when 2,000 problems are."""
    solution = exercises.check.load_learner_file(SOLUTION_2)
    problems = arithmetic.Problems(solution, arithmetic.Task(2), 2000, carry_heavy=True)
    early = problems.training(3000, torch.Generator().manual_seed(0), progress=0.0)
    assert sum(carries_far(p, 2) for p in early) > 1000  # carrying sums are served ...
    assert not set(early) & problems.test_set  # ... and not one of them is held out


def test_check_2_trains_with_the_early_carrying_sums(monkeypatch):
    """As the program does: without them, a right answer stalls more often (the margin of check 2)."""
    served = []
    carrying_sum = arithmetic.carrying_sum
    monkeypatch.setattr(arithmetic, "carrying_sum", lambda *args: served.append(1) or carrying_sum(*args))
    ex2.learns(exercises.check.load_learner_file(SOLUTION_2), pass_accuracy=0.0, **TINY_TRAINING)
    assert served


def test_the_calculator_is_served_the_learner_s_problems_alone():
    solution = exercises.check.load_learner_file(SOLUTION_2)
    task = arithmetic.Task(2, "+-*", trace=True)
    problems = arithmetic.Problems(solution, task, 50, carry_heavy=True)
    served = problems.training(300, torch.Generator().manual_seed(2), progress=0.0)
    generator = torch.Generator().manual_seed(2)
    assert served == [solution.training_problem(task, problems.test_set, generator) for _ in range(300)]


def test_a_batch_masks_the_problem_and_keeps_the_answer():
    solution = exercises.check.load_learner_file(SOLUTION_2)
    task = arithmetic.Task(3)
    problems = arithmetic.Problems(solution, task, 10)
    x, y = problems.batch([(12, "+", 345)], torch.device("cpu"))
    assert problems.tokenizer.decode(x[0].tolist()) == "012+345=7530"
    assert y[0, : task.prompt_length - 1].eq(arithmetic.IGNORE).all()
    assert problems.tokenizer.decode(y[0, task.prompt_length - 1 :].tolist()) == "7530."


class ScriptedModel(torch.nn.Module):
    """A stand-in that writes a given answer for each problem, and notes the mode it generated in."""

    def __init__(self, problems, written: list[str]) -> None:
        super().__init__()
        self.problems, self.written, self.modes = problems, written, []

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        self.modes.append(self.training)
        rows = [self.problems.tokenizer.encode(w)[:max_new_tokens] for w in self.written[: len(idx)]]
        return torch.cat([idx, torch.tensor(rows)], dim=1)


def test_the_accuracy_is_exact_match_of_the_whole_answer_in_eval_mode():
    """A known case: of 10 held-out problems, 6 answered right, 2 wrong in the last digit only (the
    first right), 1 without the end mark, 1 wrong from the first digit: 60%."""
    solution = exercises.check.load_learner_file(SOLUTION_2)
    task = arithmetic.Task(2)
    problems = arithmetic.Problems(solution, task, 10)
    right = [solution.encode(a, op, b, task)[task.prompt_length :] for a, op, b in problems.test]
    last_digit = [r[:-2] + str((int(r[-2]) + 1) % 10) + r[-1] for r in right]
    first_digit = [str((int(r[0]) + 1) % 10) + r[1:] for r in right]
    no_end = [r[:-1] + r[-2] for r in right]
    written = right[:6] + last_digit[6:8] + no_end[8:9] + first_digit[9:]
    model = ScriptedModel(problems, written).train()
    assert problems.accuracy(model, torch.device("cpu")) == {"+": 0.6}
    assert model.modes == [False] and model.training  # generated in eval mode, left as it was found


@pytest.mark.parametrize(
    "choice, change, said",
    [
        (
            "the '=' left in the loss",
            MASKED.replace("prompt_length - 1", "prompt_length - 2"),
            "the '=' left in the loss",
        ),
        (
            "the '=' and a lone operation left in",
            MASKED.replace("prompt_length - 1", "prompt_length - 2")
            + "    if len(task.operations) == 1:\n"
            + "        masked[:, task.digits - 1] = targets[:, task.digits - 1]\n",
            "the '=' and the operation where only one is served left in the loss",
        ),
    ],
)
def test_a_mask_that_keeps_only_fixed_characters_in_the_loss_is_right_and_said_so(tmp_path, choice, change, said):
    path = broken_2(tmp_path, (MASKED, change))
    result = outcomes_2(path, only=ex2.MASKS)[ex2.MASKS]
    assert result.status == "passed" and said in result.message, result


def run_2(path, argv, capsys) -> tuple[int, str, str]:
    module = exercises.check.load_learner_file(path)
    code = arithmetic.train_or_ask(module, argv)
    out, err = capsys.readouterr()
    return code, out, err


TINY_RUN = ["--digits", "1", "--held_out", "5", "--max_iters", "4", "--eval_interval", "2", "--eval_iters", "1"]
TINY_RUN += ["--batch_size", "8", "--n_embd", "16", "--n_head", "2", "--n_layer", "1", "--device", "cpu"]


def test_the_solution_trains_into_its_own_checkpoint_answers_and_resumes(tmp_path, capsys):
    ckpt = tmp_path / "add.pt"
    code, out, err = run_2(SOLUTION_2, [*TINY_RUN, "--checkpoint", str(ckpt)], capsys)
    assert code == 0, err
    assert "held-out exact match (5 problems of each operation): + " in out
    saved = harness.checkpoints.load(ckpt, "ex2_addition_solution")
    assert saved.step == 4 and saved.config["digits"] == 1 and saved.vocab == arithmetic.VOCAB

    code, out, err = run_2(SOLUTION_2, ["--ask", "3+4", "--checkpoint", str(ckpt)], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("3+4 = ") and "the model wrote" in out

    code, out, err = run_2(SOLUTION_2, [*TINY_RUN, "--max_iters", "6", "--resume", "--checkpoint", str(ckpt)], capsys)
    assert code == 0, err
    assert f"resumed from {ckpt} at step 4" in out and harness.checkpoints.load(ckpt, "ex2_addition_solution").step == 6

    code, _, err = run_2(SOLUTION_2, ["--resume", "--no-reverse", "--checkpoint", str(ckpt)], capsys)
    one_line_error(code, err, "was trained on another task (--reverse False here, True there)")


@pytest.mark.parametrize(
    "problem, said",
    [
        ("3 plus 4", "is not a problem: write two whole numbers and +, - or *"),
        ("3*4", "the model was trained on + only; train with --operations"),
        ("12+4", "operands of up to 1 digits"),
    ],
)
def test_a_bad_question_is_one_line(problem, said, tmp_path, capsys):
    ckpt = tmp_path / "add.pt"
    assert run_2(SOLUTION_2, [*TINY_RUN, "--max_iters", "1", "--checkpoint", str(ckpt)], capsys)[0] == 0
    code, _, err = run_2(SOLUTION_2, ["--ask", problem, "--checkpoint", str(ckpt)], capsys)
    one_line_error(code, err, said)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--operations", "+/"], "operations (+/) must be one or more of +-*, each once"),
        (["--digits", "1", "--held_out", "30"], "held_out (30) is more than a quarter of the 100 problems"),
        (["--ask", "1+2", "--checkpoint", "no/such.pt"], "no checkpoint at no/such.pt: train first with python"),
    ],
)
def test_bad_flags_of_exercise_2_are_one_line(flags, said, capsys):
    code, _, err = run_2(SOLUTION_2, flags, capsys)
    one_line_error(code, err, said)


def test_the_starting_file_asks_for_its_parts_before_it_trains(tmp_path, capsys):
    code, _, err = run_2(EXERCISE_2, [*TINY_RUN, "--checkpoint", str(tmp_path / "c.pt")], capsys)
    one_line_error(code, err, "() is not written yet: write it, then check it with python exercises/check.py 2")


def test_compare_names_its_own_way_to_give_a_file_when_one_is_missing(tmp_path, capsys):
    code = exercises.compare.main([str(tools.stages.STAGE_DIR / "10_gpt.py"), "nope.py", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    one_line_error(code, err, "no exercise file at nope.py: give the paths of stage 10 and of your variants")
    assert "--file" not in err  # compare takes paths; --file is check.py's


def test_compare_states_its_rule_in_its_help(capsys):
    code = exercises.compare.main(["--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "paired t-test" in said and "95% confidence interval" in said and "resolve 0.01" in said
