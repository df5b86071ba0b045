"""Exercise 4's checks: a variant of stage 10 that is a stage, trains, changes something, and keeps
stage 10's budget, so that exercises/compare.py can weigh it against stage 10."""

from __future__ import annotations

import ast
import dataclasses
import math
from types import ModuleType

import torch

import common
from exercises import runner
from exercises.checks import Check, Failed

NAME = "ex4_variant"
VOCAB = 20
TINY = dict(batch_size=4, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=0.0)
STEPS = 20


def code_of(source: str) -> str:
    """The code of a module without its comments or docstrings (the module's, its classes' and its
    functions'): what running it depends on."""
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
    return ast.dump(tree)


def is_a_stage(module: ModuleType) -> None:
    missing = [name for name in ("Config", "LanguageModel", "main") if not hasattr(module, name)]
    if missing:
        raise Failed(f"the file has no {', '.join(missing)}: keep stage 10's names, so that it runs as a stage")


def differs_from_stage_10(module: ModuleType) -> None:
    theirs = runner.stage_10_with(None)
    with open(module.__file__, encoding="utf-8") as mine, open(theirs.__file__, encoding="utf-8") as stage:
        if code_of(mine.read()) == code_of(stage.read()):
            raise Failed(
                "no change from stage 10 yet: make one change to the model (the file's docstring lists "
                "ideas); comments and docstrings do not count"
            )


def reaches_the_compared_model(module: ModuleType) -> None:
    """The change shows in the model compare.py trains: the cpu preset's sizes, the same seed."""
    stage = runner.stage_10_with(None)
    outputs = []
    for m in (stage, module):
        cfg = runner.resolved_config(m, runner.cpu_preset_flags(m))
        torch.manual_seed(0)
        model = m.LanguageModel(65, cfg)
        torch.manual_seed(1)  # the same dropout draws, where there is dropout
        idx = torch.randint(65, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))
        outputs.append((sum(p.numel() for p in model.parameters()), model(idx)[0].detach()))
    (n_theirs, theirs), (n_mine, mine) = outputs
    if n_theirs == n_mine and theirs.shape == mine.shape and torch.equal(theirs, mine):
        raise Failed(
            "the change does not reach the model compare.py trains: at stage 10's cpu preset it builds "
            "the same weights and gives the same logits (the preset sets n_embd, n_head, n_layer and "
            "dropout 0.0 over the Config's defaults; a change to those, or to dropout, shows nothing there)"
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


def keeps_the_budget(module: ModuleType) -> None:
    stage = runner.stage_10_with(None)
    theirs = runner.budget_of(stage, runner.cpu_preset_flags(stage))
    mine = runner.budget_of(module, runner.cpu_preset_flags(module))
    differ = [k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
    if differ:
        shown = ", ".join(f"{k} {mine.get(k)} here, {theirs.get(k)} in stage 10" for k in differ)
        raise Failed(
            f"it trains at another budget ({shown}): change the model, not how long or how fast it trains "
            "(compare.py refuses two budgets)"
        )


STAGE = "a stage: Config, LanguageModel, main()"


def checks() -> list[Check]:
    return [
        Check(STAGE, is_a_stage),
        Check("differs from stage 10", differs_from_stage_10, needs=(STAGE,)),
        Check(
            "the change reaches the model compare.py trains",
            reaches_the_compared_model,
            needs=("differs from stage 10",),
        ),
        Check("builds and trains without nan", trains_without_nan, needs=(STAGE,)),
        Check("trains at stage 10's budget (its Config and preset)", keeps_the_budget, needs=(STAGE,)),
    ]
