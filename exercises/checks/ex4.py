"""Exercise 4's checks: a variant of stage 10 that is a stage, trains, changes something (the model
or how it trains), and keeps stage 10's budget (what it trains on and how its loss is measured), so
that exercises/compare.py can weigh it against stage 10."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import math
import tempfile
from pathlib import Path
from types import ModuleType

import torch

import common
import harness
import harness.checkpoints
import tools.stages
from exercises import learner_stage
from exercises.checks import Check, Failed

NAME = "ex4_variant"
VOCAB = 20
TINY = dict(batch_size=4, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=0.0)
STEPS = 20


def code_of(source: str, overridden: frozenset[str] = frozenset()) -> str:
    """The code of a module without its comments or docstrings (the module's, its classes' and its
    functions'): what running it depends on. overridden: Config fields a preset sets, whose defaults
    (and the PRESETS table itself) are left out too, as the preset's run never reads them."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            node.body = body[1:] or [ast.Pass()]
    if overridden:
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Config":
                for field in node.body:
                    if isinstance(field, ast.AnnAssign) and getattr(field.target, "id", None) in overridden:
                        field.value = ast.Constant(None)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and "PRESETS" in names_assigned(node):
                node.value = ast.Constant(None)
    return ast.dump(tree)


def names_assigned(node: ast.Assign | ast.AnnAssign) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def config_defaults(module: ModuleType) -> dict:
    return {f.name: f.default for f in dataclasses.fields(module.Config)}


def preset_fields(module: ModuleType) -> dict:
    """What the cpu preset sets over the Config's defaults in module ({} without one)."""
    return dict(getattr(module, "PRESETS", {}).get("cpu", {}))


def is_a_stage(module: ModuleType) -> None:
    missing = [name for name in ("Config", "LanguageModel", "main") if not hasattr(module, name)]
    if missing:
        raise Failed(f"the file has no {', '.join(missing)}: keep stage 10's names, so that it runs as a stage")


def differs_from_stage_10(module: ModuleType) -> None:
    theirs = learner_stage.stage_10_with(None)
    with open(module.__file__, encoding="utf-8") as mine, open(theirs.__file__, encoding="utf-8") as stage:
        if code_of(mine.read()) == code_of(stage.read()):
            raise Failed(
                "no change from stage 10 yet: make one change to the model (the file's docstring lists "
                "ideas); comments and docstrings do not count"
            )


@dataclasses.dataclass
class ShortRun:
    """What a few steps of a file's own main() did: where the weights ended, what training drew."""

    weights: dict[str, torch.Tensor]
    drawn: list[tuple[int, int, int]]  # each training batch: (the split's length, batch, context)


# by file and its text: the budget check reuses the run the change check made, and a file is run again
# only once it is edited (stage 10's own run serves every check of the session)
SHORT_RUNS: dict[tuple[str, bytes], ShortRun] = {}
SHORT = ["--max_iters", "3", "--eval_interval", "3", "--eval_iters", "1", "--num_tokens", "1"]
SHORT += ["--device", "cpu", "--seed", "0"]


def short_run(module: ModuleType) -> ShortRun:
    """module's main() at the cpu preset's sizes for a few steps on a small text, as compare.py runs
    it: the weights it ends with, and every batch it drew outside the loss estimate."""
    key = (module.__file__, Path(module.__file__).read_bytes())
    if key in SHORT_RUNS:
        return SHORT_RUNS[key]
    drawn: list[tuple[int, int, int]] = []
    estimating = False
    get_batch, estimate_loss = common.get_batch, common.estimate_loss

    def counting_get_batch(data, batch_size, block_size, *rest, **named):
        if not estimating:
            drawn.append((len(data), batch_size, block_size))
        return get_batch(data, batch_size, block_size, *rest, **named)

    def marked_estimate_loss(*args, **named):
        nonlocal estimating
        estimating = True
        try:
            return estimate_loss(*args, **named)
        finally:
            estimating = False

    letters = torch.randint(26, (4000,), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        text, ckpt = Path(tmp) / "text.txt", Path(tmp) / "run.pt"
        text.write_text("".join(chr(97 + i) for i in letters.tolist()), encoding="utf-8")
        argv = [*learner_stage.cpu_preset_flags(module), *SHORT, "--data", str(text), "--checkpoint", str(ckpt)]
        common.get_batch, common.estimate_loss = counting_get_batch, marked_estimate_loss
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                code = harness.run_main(module.main, argv)
        finally:
            common.get_batch, common.estimate_loss = get_batch, estimate_loss
        if code != 0:
            said = err.getvalue().strip().splitlines()[-1:] or ["nothing"]
            raise Failed(f"a short run of the file at the cpu preset stopped (exit status {code}): {said[0]}")
        weights = harness.checkpoints.load(ckpt, tools.stages.stage_name(module.__file__)).model
    SHORT_RUNS[key] = ShortRun(weights, drawn)
    return SHORT_RUNS[key]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def first_logits(module: ModuleType) -> torch.Tensor:
    """The logits of module's model at the cpu preset's sizes, freshly built with seed 0, in eval mode."""
    cfg = learner_stage.resolved_config(module, learner_stage.cpu_preset_flags(module))
    torch.manual_seed(0)
    model = module.LanguageModel(65, cfg).eval()
    idx = torch.randint(65, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
    return model(idx)[0].detach()


def what_the_runs_execute(module: ModuleType, overridden: frozenset[str]) -> tuple[str, dict]:
    """The code a run of module at the cpu preset executes (without the defaults the preset sets over,
    see code_of) and the Config it resolves: two files equal in both make the same runs."""
    with open(module.__file__, encoding="utf-8") as f:
        code = code_of(f.read(), overridden)
    flags = learner_stage.cpu_preset_flags(module)
    return code, dataclasses.asdict(learner_stage.resolved_config(module, flags))


def overridden_defaults(module: ModuleType, stage: ModuleType) -> list[str]:
    """The Config defaults module changed from stage 10's that the cpu preset sets over: "n_embd 512
    here, 384 in stage 10, the preset's 128"."""
    mine, theirs, preset = config_defaults(module), config_defaults(stage), preset_fields(module)
    return [
        f"{k} {mine[k]} here, {theirs[k]} in stage 10, the preset's {preset[k]}"
        for k in mine
        if k in preset and k in theirs and mine[k] != theirs[k]
    ]


def reaches_the_compared_runs(module: ModuleType) -> str:
    """The change shows in what compare.py trains: the weights or the first logits differ after a few
    steps at the cpu preset; or, where a change acts only under conditions those steps do not meet (a
    gradient norm above a bound, a later step), the code and the Config the runs execute differ."""
    stage = learner_stage.stage_10_with(None)
    theirs, mine = first_logits(stage), first_logits(module)
    if not (theirs.shape == mine.shape and torch.equal(theirs, mine)):
        return "a change to the model: other logits from the first step"
    if not same_weights(short_run(stage).weights, short_run(module).weights):
        return "a change to how it trains: the same model, other weights after a few steps"
    overridden = frozenset(preset_fields(stage)) | frozenset(preset_fields(module))
    if what_the_runs_execute(module, overridden) != what_the_runs_execute(stage, overridden):
        return (
            "a change to how it trains: the same model and, after a few steps, the same weights, but other code "
            "or settings in the runs: a change that acts only under some conditions (a gradient norm above a "
            "bound, a later step), which compare.py's full runs can meet"
        )
    changed = overridden_defaults(module, stage)
    if changed:
        raise Failed(
            f"the change does not reach the runs compare.py makes: it changes the Config's defaults only "
            f"({'; '.join(changed)}), and the cpu preset, which compare.py runs, sets the sizes, the rate and "
            "dropout over them: change the value in PRESETS['cpu'] instead"
        )
    raise Failed(
        "the change does not reach the runs compare.py makes: at the cpu preset, which compare.py runs, the file "
        "executes stage 10's code with stage 10's settings (a change to another preset shows nothing there): "
        "change the model, the loop, or PRESETS['cpu']"
    )


def trains_without_nan(module: ModuleType) -> str:
    fields = {f.name for f in dataclasses.fields(module.Config)}
    cfg = module.Config(**{k: v for k, v in TINY.items() if k in fields})
    torch.manual_seed(0)
    model = module.LanguageModel(VOCAB, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = torch.arange(400) % VOCAB  # a pattern to learn: each token is the one before plus 1
    batches = torch.Generator().manual_seed(0)
    losses = []
    for step in range(STEPS):
        xb, yb = common.get_batch(text, 4, cfg.block_size, batches)  # (B, T) each
        _, loss = model(xb, yb)
        if not math.isfinite(loss.item()):
            raise Failed(f"the loss became {loss.item()} at step {step} of a tiny run: the change breaks training")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return f"{STEPS} steps at a tiny size, loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def keeps_the_budget(module: ModuleType) -> str:
    stage = learner_stage.stage_10_with(None)
    theirs = learner_stage.budget_of(stage, learner_stage.cpu_preset_flags(stage))
    mine = learner_stage.budget_of(module, learner_stage.cpu_preset_flags(module))
    differ = [k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
    if differ:
        shown = ", ".join(f"{k} {mine.get(k)} here, {theirs.get(k)} in stage 10" for k in differ)
        raise Failed(
            f"it trains at another budget ({shown}): change the model or how it trains, not how much it "
            "trains on or how its loss is measured (compare.py refuses two budgets)"
        )
    drawn, expected = short_run(module).drawn, short_run(stage).drawn
    if drawn != expected:
        characters = sum(b * t for _, b, t in drawn), sum(b * t for _, b, t in expected)
        raise Failed(
            f"in {len(expected)} steps its loop drew {len(drawn)} batches of text to train on "
            f"({characters[0]:,} characters) where stage 10 draws {len(expected)} ({characters[1]:,}): one "
            "batch of the train split a step, batch_size by block_size"
        )
    return f"{', '.join(f'{k} {v}' for k, v in mine.items())}; one batch of the train split a step"


STAGE = "a stage: Config, LanguageModel, main()"


def checks() -> list[Check]:
    return [
        Check(STAGE, is_a_stage),
        Check("differs from stage 10", differs_from_stage_10, needs=(STAGE,)),
        Check(
            "the change reaches the runs compare.py makes",
            reaches_the_compared_runs,
            needs=("differs from stage 10",),
        ),
        Check("builds and trains without nan", trains_without_nan, needs=(STAGE,)),
        Check("trains at stage 10's budget (its Config, its preset, its loop)", keeps_the_budget, needs=(STAGE,)),
    ]
