"""Exercise 5's checks: the learner's cached generate against stage 10's own, on the same weights.

Both generate from the same prompts with the same seeds. The checks read each step's logits where
both hand them to common.adjust_logits, and count each step's work: the positions the linear layers
see, the multiply-adds of the attention products (as check 1 counts them), and every multiply-add of
the matrix products (torch's FlopCounterMode). Logits are compared within TOLERANCE: float32 sums
the same products in another order, nothing more. The first check takes cached_attention alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

import common
import harness
from exercises import learner_stage
from exercises.checks import Check, Failed
from exercises.checks.ex1 import PRODUCTS  # the attention products check 1 counts

NAME = "ex5_kv_cache"
VOCAB, N_EMBD, N_HEAD, N_LAYER, BLOCK = 20, 24, 3, 2, 8
TOLERANCE = 1e-4  # the largest difference of a logit allowed
DROPOUT = 0.2  # the rate of the eval-mode check: stage 10's own
LONG = 2 * BLOCK + 4  # new characters well past block_size


@functools.cache
def stage() -> ModuleType:
    """Stage 10 as it is: the reference."""
    return learner_stage.stage_10_with(None)


def config(**overrides):
    sizes = dict(batch_size=4, block_size=BLOCK, n_embd=N_EMBD, n_head=N_HEAD, n_layer=N_LAYER, dropout=0.0)
    return stage().Config(**{**sizes, **overrides})


def learner_class(module: ModuleType) -> type:
    cls = getattr(module, "CachedLanguageModel", None)
    if not isinstance(cls, type):
        raise Failed("the file has no class CachedLanguageModel: keep the name the exercise gives it")
    return cls


def pair(module: ModuleType, seed: int = 0, zero_positions: bool = False, **overrides) -> tuple[nn.Module, nn.Module]:
    """Stage 10's LanguageModel and the learner's, with the same weights, in eval mode."""
    cfg = config(**overrides)
    torch.manual_seed(seed)
    reference = stage().LanguageModel(VOCAB, cfg)
    mine = learner_class(module)(VOCAB, cfg)
    _, lacking = mine.load_state_dict(reference.state_dict(), strict=False)  # stage 10's weights it has not
    if lacking:
        raise Failed(
            f"CachedLanguageModel has no {lacking[0]}, a weight of stage 10's model: subclass stage 10's "
            "LanguageModel, as the file does, so that its weights are stage 10's"
        )
    if zero_positions:  # both models without position embeddings: where positions cannot matter
        with torch.no_grad():
            reference.position_embedding_table.weight.zero_()
            mine.position_embedding_table.weight.zero_()
    return reference.eval(), mine.eval()


def prompt(length: int, batch: int = 1, seed: int = 0) -> Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))  # (B, T)


# -- one generate, its steps recorded -----------------------------------------------------------


def product_madds(func, args: tuple) -> int:
    """The multiply-adds of one call of PRODUCTS."""
    if func is torch.einsum:  # every index of the equation runs over its size once
        equation, operands = args[0], args[1:]
        if len(operands) == 1 and isinstance(operands[0], list | tuple):
            operands = operands[0]
        sizes = {}
        for letters, operand in zip(equation.replace(" ", "").split("->")[0].split(","), operands, strict=False):
            letters = letters.replace("...", "")
            sizes.update(zip(letters, operand.shape[operand.dim() - len(letters) :], strict=True))
        return math.prod(sizes.values())
    if func is F.scaled_dot_product_attention:  # queries x keys x (head_size of q, then of v)
        q, k, v = args[:3]
        batch = math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]))
        return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    a, b = args[1:3] if func is torch.baddbmm else (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else args[:2]
    a = a if a.dim() > 1 else a.unsqueeze(0)  # (k,) as (1, k)
    b = b if b.dim() > 1 else b.unsqueeze(-1)  # (k,) as (k, 1)
    batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class StepWork(TorchFunctionMode):
    """Counts, inside it, the positions the linear layers see and the attention products' multiply-adds;
    with flops (torch's FlopCounterMode), every matrix product however written (F.linear, @, einsum)."""

    def __init__(self, flops: FlopCounterMode | None = None) -> None:
        super().__init__()
        self.rows, self.madds, self.sdpa_madds = 0, 0, 0
        self.flops = flops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:  # (..., in) -> (..., out): one row a position
            self.rows += args[0].numel() // args[0].shape[-1]
        elif func in PRODUCTS:
            try:
                madds = product_madds(func, args)
            except (IndexError, TypeError, ValueError, RuntimeError):  # a form not foreseen: not counted
                madds = 0
            self.madds += madds
            if func is F.scaled_dot_product_attention:  # FlopCounterMode counts it on a GPU only
                self.sdpa_madds += madds
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        """Every multiply-add of the matrix products so far: the weights' and attention's."""
        return (self.flops.get_total_flops() // 2 if self.flops else 0) + self.sdpa_madds


@dataclasses.dataclass
class Run:
    """One call of a generate: what it returned, and each step's logits (B, vocab) and work."""

    prompt_length: int
    out: object = None
    logits: list[Tensor] = dataclasses.field(default_factory=list)
    rows: list[int] = dataclasses.field(default_factory=list)
    madds: list[int] = dataclasses.field(default_factory=list)
    work: list[int] = dataclasses.field(default_factory=list)  # every multiply-add of a step


@contextlib.contextmanager
def recorded(run: Run, count: bool) -> Iterator[Run]:
    """Each call of common.adjust_logits inside: a step, its logits and (count) the work since the last."""
    flops = FlopCounterMode(display=False)
    work, original, done = StepWork(flops), common.adjust_logits, [0]

    def adjust_logits(logits, *args, **kwargs):
        run.logits.append(logits.detach().float().cpu().clone())
        run.rows.append(work.rows)
        run.madds.append(work.madds)
        run.work.append(work.total() - done[0])
        work.rows = work.madds = 0
        done[0] = work.total()
        return original(logits, *args, **kwargs)

    common.adjust_logits = adjust_logits
    try:
        with contextlib.ExitStack() as counting:
            if count:
                counting.enter_context(flops)
                counting.enter_context(work)
            yield run
    finally:
        common.adjust_logits = original


def generate(model: nn.Module, idx: Tensor, new: int, seed=0, temperature=1.0, top_k=None, count=False) -> Run:
    with recorded(Run(idx.shape[1]), count) as run:
        torch.manual_seed(seed)
        run.out = model.generate(idx.clone(), new, temperature=temperature, top_k=top_k)
    return run


def learners_generate(mine: nn.Module, idx: Tensor, new: int, **sampling) -> Run:
    """The learner's generate, its run checked for what any generate returns; an IndexError or
    ValueError past block_size said as that."""
    try:
        run = generate(mine, idx, new, **sampling)
    except (IndexError, ValueError) as e:  # a position past the table's, or the learner's own guard
        if idx.shape[1] + new - 1 <= BLOCK:
            raise
        path = Path(getattr(sys.modules.get(type(mine).__module__), "__file__", None) or ".")
        raise Failed(
            f"past block_size ({BLOCK} characters) {learner_stage.raised(e, path)}: the position table has "
            "block_size rows; decide what happens past them (stage 10 then looks at the last block_size "
            "characters, at positions 0 .. block_size - 1)"
        ) from None
    B, T = idx.shape
    shape = tuple(run.out.shape) if isinstance(run.out, Tensor) else type(run.out).__name__
    if shape != (B, T + new):
        raise Failed(
            f"for a prompt of shape ({B}, {T}) and {new} new characters generate returns {shape}, not "
            f"({B}, {T + new}): the prompt, then the new characters"
        )
    if not torch.equal(run.out[:, :T], idx):
        raise Failed("generate returns another prompt than it was given: return the prompt, then the new characters")
    if len(run.logits) != new or any(tuple(x.shape) != (B, VOCAB) for x in run.logits):
        shapes = sorted({tuple(x.shape) for x in run.logits})
        raise Failed(
            f"for {new} new characters of {B} prompts generate handed common.adjust_logits {len(run.logits)} "
            f"logits (shapes {shapes or 'none'}), not {new} of ({B}, vocab_size): keep stage 10's sampling "
            "lines, once a step, with the last position's logits"
        )
    return run


# -- comparing two runs ---------------------------------------------------------------------------


@dataclasses.dataclass
class Difference:
    step: int  # 0-based: new character step + 1
    context: int  # the characters before it
    row: int  # the sequence of the batch
    gap: float  # the largest difference of a logit there; 0 when only the characters differ

    def where(self) -> str:
        return f"new character {self.step + 1} (after {self.context} characters)"


def first_difference(reference: Run, mine: Run) -> Difference | None:
    """The first step whose logits differ by more than TOLERANCE, or whose character differs."""
    T = reference.prompt_length
    for step, (theirs, ours) in enumerate(zip(reference.logits, mine.logits, strict=True)):
        gap = (theirs - ours).abs().amax(dim=-1)  # (B,)
        if gap.max() > TOLERANCE:
            row = int(gap.argmax())
            return Difference(step, T + step, row, float(gap[row]))
        chars = reference.out[:, T + step] != mine.out[:, T + step]  # (B,)
        if chars.any():
            return Difference(step, T + step, int(chars.int().argmax()), 0.0)
    return None


PAST_HINT = (
    "past block_size stage 10 looks at the last block_size characters at positions 0 .. block_size - 1: "
    "every character moves one position back, so every position embedding, key and value changes; a "
    "cache cannot slide on: start a new one from the last block_size characters"
)
POSITION_HINT = (
    "with the position embeddings set to zero in both models yours agree, so the positions you look up "
    "are off: a window's characters are at 0, 1, ..., and a new character after n cached ones is at n"
)
GENERIC_HINT = (
    "compare your cached attention with stage 10's Head: each new query against the keys of every "
    "earlier position and its own, scaled by head_size**-0.5, softmaxed, times their values; then proj, "
    "and each block's two residual sums"
)
SAMPLING_HINT = (
    "keep stage 10's sampling lines as they are: one torch.multinomial draw a step, from the softmax of the "
    "logits common.adjust_logits returns"
)


@dataclasses.dataclass
class Case:
    """One generate, the same for both: the prompt's length, the characters to add, the sampling."""

    length: int
    new: int
    batch: int = 1
    seed: int = 0
    temperature: float = 1.0
    top_k: int | None = None
    row: int | None = None  # that sequence of the batch's prompts alone

    def run_on(self, reference: nn.Module, mine: nn.Module) -> tuple[Run, Run]:
        idx = prompt(self.length, self.batch, self.seed)
        if self.row is not None:
            idx = idx[self.row : self.row + 1]  # (1, T)
        sampling = dict(seed=self.seed, temperature=self.temperature, top_k=self.top_k)
        return generate(reference, idx, self.new, **sampling), learners_generate(mine, idx, self.new, **sampling)

    def runs(self, module: ModuleType, **model) -> tuple[Run, Run]:
        return self.run_on(*pair(module, **model))


def why(module: ModuleType, case: Case, difference: Difference, **model) -> str:
    """A hint for the usual mistakes, each recognised by where the runs part or what makes them agree."""
    if difference.gap == 0:
        return SAMPLING_HINT
    if difference.context > BLOCK:  # everything before agreed: the window has started to slide
        return PAST_HINT
    if first_difference(*case.runs(module, zero_positions=True, **model)) is None:
        return POSITION_HINT
    return GENERIC_HINT


def same_run(module: ModuleType, case: Case, said: str, **model) -> None:
    reference, mine = case.runs(module, **model)
    difference = first_difference(reference, mine)
    if difference is not None:
        differ = (
            f"your logits differ from stage 10's by up to {difference.gap:.2g} from {difference.where()} on"
            if difference.gap
            else f"your characters differ from stage 10's from {difference.where()} on, though the logits agree"
        )
        raise Failed(f"{said}: {differ}: {why(module, case, difference, **model)}")


# -- the checks ---------------------------------------------------------------------------------


def attention_alone(module: ModuleType) -> str:
    """cached_attention on its own, before the rest is written: block 0's attention for 3 new positions
    on a new cache (the learner's new_cache), then for 2 more, against stage 10's over all 5."""
    attend = getattr(module, "cached_attention", None)
    if not callable(attend):
        raise Failed("the file has no function cached_attention: keep the name the exercise gives it")
    reference, mine = pair(module)
    sa = mine.blocks[0].sa  # the learner's model holds stage 10's weights
    x = torch.randn(2, 5, N_EMBD, generator=torch.Generator().manual_seed(13))  # (B, T, C)
    cache = mine.new_cache()
    with torch.no_grad():
        expected = reference.blocks[0].sa(x)  # (B, 5, C) stage 10's attention over all five positions at once
        parts = [attend(sa, x[:, :3], cache, 0)]
        cache.length += 3  # what forward_cached does once every layer has seen the new positions
        parts.append(attend(sa, x[:, 3:], cache, 0))
    shapes = [tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__ for p in parts]
    if shapes != [(2, 3, N_EMBD), (2, 2, N_EMBD)]:
        raise Failed(
            f"for new positions x of shapes (2, 3, {N_EMBD}) then (2, 2, {N_EMBD}) cached_attention returned "
            f"{shapes[0]} then {shapes[1]}: one output for each new position, (B, T_new, C) as sa(x)"
        )
    gap = (torch.cat(parts, dim=1) - expected).abs().amax(dim=(0, 2))  # (5,) a position's largest difference
    if gap[:3].max() > TOLERANCE:
        raise Failed(
            f"on a new cache, the 3 new positions differ from stage 10's attention by up to {gap[:3].max():.2g}: "
            "compute as stage 10's heads do, each position's query against the keys up to its own (head.tril), "
            "scaled by head_size**-0.5, then sa.proj"
        )
    if gap[3:].max() > TOLERANCE:
        raise Failed(
            f"after 3 cached positions (cache.length 3), the 2 new ones differ from stage 10's attention by up to "
            f"{gap[3:].max():.2g}: they must see the cached keys and values and their own, new position i being "
            "position cache.length + i"
        )
    return f"3 new positions, then 2 more from the cache: within {TOLERANCE:g} of stage 10's attention"


def long_prompt(module: ModuleType) -> str:
    """A prompt longer than block_size, which stage 10's generate crops to its last block_size characters."""
    reference, mine = pair(module)
    idx = prompt(BLOCK + 5, seed=9)
    said = f"a prompt of {BLOCK + 5} characters, longer than block_size ({BLOCK})"
    crop = "crop it to its last block_size characters before the first step, as stage 10's generate does"
    try:
        ours = generate(mine, idx, 3, top_k=1)
    except (IndexError, ValueError, RuntimeError) as e:
        path = Path(getattr(module, "__file__", None) or ".")
        raise Failed(f"for {said} {learner_stage.raised(e, path)}: {crop}") from None
    difference = first_difference(generate(reference, idx, 3, top_k=1), ours)
    if difference is not None:
        raise Failed(f"for {said} your logits differ from stage 10's from {difference.where()} on: {crop}")
    return f"{said}: 3 new characters within {TOLERANCE:g}"


def runs(module: ModuleType) -> None:
    _, mine = pair(module)
    learners_generate(mine, prompt(3, batch=2), 5)
    learners_generate(mine, prompt(3, batch=2), 0)


def same_logits_inside(module: ModuleType) -> str:
    case = Case(length=2, new=BLOCK - 3, top_k=1)  # the last step sees block_size - 2: room for a position too high
    same_run(module, case, f"from a 2-character prompt, {case.new} new characters")
    return f"{case.new} steps within {TOLERANCE:g}"


def same_logits_past(module: ModuleType) -> str:
    case = Case(length=5, new=LONG, top_k=1)
    same_run(module, case, f"from a 5-character prompt, {case.new} new characters (block_size {BLOCK})")
    return f"{case.new} steps within {TOLERANCE:g}, to {case.length + case.new - 1} characters (block_size {BLOCK})"


GREEDY_CASES = {
    "1 character from a 1-character prompt": Case(length=1, new=1, seed=1),
    "a 5-character prompt and 8 more": Case(length=5, new=8, seed=2),
    "a 1-character prompt to exactly block_size": Case(length=1, new=BLOCK - 1, seed=3),
    "a prompt of exactly block_size characters and 6 more": Case(length=BLOCK, new=6, seed=4),
    "a 5-character prompt to well past block_size": Case(length=5, new=LONG, seed=5),
}


def same_text_greedy(module: ModuleType) -> str:
    for said, case in GREEDY_CASES.items():
        same_run(module, dataclasses.replace(case, top_k=1), f"greedy (top_k 1), {said}")
    return f"{len(GREEDY_CASES)} prompts, 1 to {LONG} new characters"


SAMPLED_CASES = {
    "sampled at temperature 1 with seed 6": Case(length=4, new=LONG, seed=6),
    "sampled at temperature 0.8, top_k 5, with seed 7": Case(length=4, new=LONG, seed=7, temperature=0.8, top_k=5),
}


def same_text_sampled(module: ModuleType) -> str:
    for said, case in SAMPLED_CASES.items():
        same_run(module, case, said)
    return f"{len(SAMPLED_CASES)} seeds, {LONG} characters each"


def batch_apart(module: ModuleType) -> str:
    case = Case(length=4, new=2 * BLOCK, batch=3, seed=8, top_k=1)
    reference, mine = case.runs(module)
    difference = first_difference(reference, mine)
    if difference is None:
        return f"3 prompts at once, {case.new} new characters each"
    row = difference.row
    same_run(module, dataclasses.replace(case, row=row), f"row {row}'s prompt alone")  # a mistake of its own
    raise Failed(
        f"with a batch of 3 prompts, row {row}'s logits differ from stage 10's from {difference.where()} on, "
        "though that prompt alone agrees: your cache mixes the sequences of the batch; keep their keys and "
        "values apart (concatenate along time, dim 1; never view or reshape across batch and time)"
    )


def new_cache_each_call(module: ModuleType) -> str:
    # the first call ends inside the window: a cache it leaves behind is not full
    first, second = Case(length=3, new=BLOCK - 6, seed=9, top_k=1), Case(length=2, new=BLOCK + 3, seed=10, top_k=1)
    same_run(module, first, "a first call of generate")
    reference, mine = pair(module)
    first.run_on(reference, mine)
    difference = first_difference(*second.run_on(reference, mine))
    if difference is not None:
        raise Failed(
            f"a second call of generate on the same model, with another prompt, differs from stage 10's from "
            f"{difference.where()} on, though a first call agrees: something of the first call's cache carries "
            "over; start a new cache in each call"
        )
    return "two calls on one model, each as stage 10's"


def no_dropout_in_eval(module: ModuleType) -> str:
    case = Case(length=3, new=2 * BLOCK, seed=11, top_k=1)
    difference = first_difference(*case.runs(module, dropout=DROPOUT))
    if difference is not None:
        same_run(module, case, "the same prompt with dropout 0")  # a mistake of its own
        raise Failed(
            f"with dropout {DROPOUT} and the model in eval mode, your logits differ from stage 10's (which "
            f"drops nothing there) from {difference.where()} on, and agree with dropout 0: your cached pass "
            "still drops in eval mode; use stage 10's nn.Dropout modules (head.dropout, sa.dropout), which "
            "switch off there, or F.dropout(..., training=self.training)"
        )
    _, mine = pair(module, dropout=DROPOUT)
    for mode in (False, True):
        mine.train(mode)
        learners_generate(mine, prompt(3), 2)
        if mine.training != mode:
            raise Failed(
                f"generate leaves a model it was given in {'training' if mode else 'eval'} mode in "
                f"{'training' if mine.training else 'eval'} mode: leave the mode as it was"
            )
    return f"dropout {DROPOUT} configured, none in eval mode"


def one_position(model: nn.Module) -> tuple[int, int]:
    """The multiply-adds a cache needs for one new character: (its weights', attention's over block_size).

    The weights': one position through every linear layer. Attention's: in each layer its query
    against block_size keys and its weights against as many values, the most a window holds, so
    that a cache that attends a whole preallocated window at every step is no more work than allowed.
    """
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return weights, N_LAYER * 2 * BLOCK * N_EMBD


def work_per_character(module: ModuleType) -> str:
    """Inside one window: the positions the linear layers see a step, how the attention products grow,
    and how much work a new character costs against one position's."""
    reference, mine = pair(module)
    idx = prompt(1, seed=12)
    theirs = generate(reference, idx, BLOCK, top_k=1, count=True)
    ours = learners_generate(mine, idx, BLOCK, top_k=1, count=True)
    # step s adds the character after s + 1 characters: its context is s + 1
    early, late = 2, BLOCK
    rows = {c: ours.rows[c - 1] for c in (early, late)}
    if rows[late] > 1.5 * rows[early]:
        raise Failed(
            f"a new character runs {rows[early]} positions through the model's linear layers at context {early} "
            f"and {rows[late]} at context {late} (stage 10's generate: {theirs.rows[early - 1]} and "
            f"{theirs.rows[late - 1]}): your generate recomputes the positions it has seen; run only the new "
            "one, with the keys and values of the others from the cache"
        )
    madds = {c: ours.madds[c - 1] for c in (early, late)}
    growth, context_growth = madds[late] / max(madds[early], 1), late / early
    if growth > 2 * context_growth:
        raise Failed(
            f"the attention products of a new character are {growth:.0f}x as large at context {late} as at "
            f"{early}, where the context is {context_growth:.0f}x as long: they grow with its square; compute "
            "only the new position's query against the cached keys, one row of weights, not the whole matrix"
        )
    weights, attention = one_position(reference)
    most = max(ours.work[1:BLOCK])  # each step after the prompt's, up to a context of block_size
    if most >= BLOCK / 2 * weights:
        raise Failed(
            f"a new character costs {most:,} multiply-adds, as much as running {most / weights:.0f} positions "
            "through the model: each step runs a whole window again, which is stage 10's generate without a "
            "cache; run only the new character, with the keys and values of the others from the cache"
        )
    if most > 1.25 * (weights + attention):
        raise Failed(
            f"a new character costs {most:,} multiply-adds, {most / (weights + attention):.1f}x what one "
            f"position needs ({weights:,} through the weights, {attention:,} for attention over block_size): "
            "your generate computes again keys or values it has seen; compute each once, at its own step, "
            "and keep it in the cache"
        )
    return (
        f"{rows[early]} and {rows[late]} positions through the linear layers for a character at context {early} "
        f"and {late} (stage 10's: {theirs.rows[early - 1]} and {theirs.rows[late - 1]}); attention products "
        f"{growth:.1f}x as large at context {late} as at {early}; at most {most:,} multiply-adds a character, "
        f"against {weights + attention:,} for one position"
    )


def training_unchanged(module: ModuleType) -> str:
    reference, mine = pair(module, dropout=DROPOUT)
    theirs, ours = set(reference.state_dict()), set(mine.state_dict())
    if ours != theirs:
        extra = sorted(ours - theirs) or sorted(theirs - ours)
        raise Failed(
            f"the model's state_dict has {extra[0]}, which stage 10's has not: its checkpoints would not load; "
            "keep the cache out of the model's parameters and buffers (or register it with persistent=False)"
        )
    xb = torch.randint(VOCAB, (4, BLOCK + 1), generator=torch.Generator().manual_seed(13))
    inputs, targets = xb[:, :-1].contiguous(), xb[:, 1:].contiguous()  # (B, T) each

    def forward_and_backward(model: nn.Module) -> tuple[Tensor, Tensor, list[Tensor]]:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(14)  # the same dropout draws for both
        logits, loss = model(inputs, targets)
        loss.backward()
        return logits.detach(), loss.detach(), [p.grad for p in model.parameters()]

    expected = forward_and_backward(reference)
    for when in ("", "after a generate, "):
        if when:
            learners_generate(mine.eval(), prompt(3), BLOCK + 2)
        logits, loss, grads = forward_and_backward(mine)
        same = torch.allclose(logits, expected[0], atol=1e-6) and torch.allclose(loss, expected[1], atol=1e-6)
        if not same:
            raise Failed(
                f"{when}the model's ordinary forward, in training with dropout {DROPOUT}, gives a loss of "
                f"{loss.item():.6f} where stage 10's gives {expected[1].item():.6f}: the cache must leave "
                "forward(idx, targets), and so training, as stage 10 has them"
            )
        if any(g is None or not torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected[2], strict=True)):
            raise Failed(f"{when}the gradients of the ordinary forward differ from stage 10's: leave training as it is")
    return "the same weights, logits, loss and gradients, before and after a generate"


def chars_per_second(model: nn.Module, characters: int) -> float:
    idx = torch.zeros((1, 1), dtype=torch.long)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model.generate(idx, characters)
    return characters / (time.perf_counter() - t0)


def speed(sizes: dict[str, tuple[dict, int]]):
    """Characters a second with the learner's cache and with stage 10's generate, for each named size:
    (the Config's fields, characters from a 1-character prompt)."""

    def report(module: ModuleType) -> str:
        lines = []
        for name, (fields, characters) in sizes.items():
            cfg = stage().Config(**{**fields, "dropout": 0.0})
            torch.manual_seed(0)
            reference = stage().LanguageModel(65, cfg).eval()
            mine = learner_class(module)(65, cfg).eval()
            mine.load_state_dict(reference.state_dict(), strict=False)
            for model in (reference, mine):  # warm up
                chars_per_second(model, 2)
            theirs, ours = chars_per_second(reference, characters), chars_per_second(mine, characters)
            lines.append(
                f"{name}: {ours:.0f} characters a second with your cache, {theirs:.0f} without "
                f"({ours / theirs:.1f}x), {characters} after a 1-character prompt, block_size {cfg.block_size}"
            )
        return "; ".join(lines) + ", on one CPU thread (reported, not judged)"

    return report


def preset(name: str) -> dict:
    fields = ("block_size", "n_embd", "n_head", "n_layer")
    presets = stage().PRESETS
    defaults = stage().Config()
    return {k: presets[name].get(k, getattr(defaults, k)) for k in fields}


SPEED_SIZES = {
    "cpu preset": (preset("cpu"), 200),
    "the lecture's configuration": (preset("video"), 100),
}

ATTENTION = "cached_attention alone: stage 10's attention for the new positions, from the cache"
RUNS, LOGITS, PAST = (
    "generate returns the prompt and the new characters",
    "the same logits at every step, inside block_size",
    "the same logits past block_size",
)


def sample_main(cached_class: type, argv: list[str] | None = None) -> int:
    """`python exercises/ex5_kv_cache.py [flags]`: stage 10's --sample, its trained model (stage 10's
    checkpoint, never written) generating with cached_class's generate; stage 10's sampling flags."""
    name = f"stage_{learner_stage.STAGE_10}"  # where importing stage 10 puts it in sys.modules
    before = sys.modules.get(name)
    sampling = learner_stage.stage_10_with(None)  # a fresh import: the checks' reference stays as it is
    sampling.LanguageModel = cached_class  # stage 10's main builds the model it loads by this name

    def main(argv: list[str]) -> None:
        try:
            sampling.main(["--sample", *argv])
        except NotImplementedError as e:
            if "not written yet" not in str(e):
                raise
            raise harness.UserError(f"{e}: write it, then check it with python exercises/check.py 5") from None

    try:
        return harness.run_main(main, sys.argv[1:] if argv is None else list(argv))
    finally:  # what imports stage 10 by that name after this finds stage 10 as it is, not this one
        if before is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = before


def one_thread(run: Callable[[ModuleType], str | None]) -> Callable[[ModuleType], str | None]:
    """run on one thread: the checks' models are small, and on a busy machine a second thread mostly waits
    (the speed too: one character at a time is many small steps, and one thread times them steadily)."""

    @functools.wraps(run)
    def on_one_thread(module: ModuleType) -> str | None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run(module)
        finally:
            torch.set_num_threads(threads)

    return on_one_thread


def checks(speed_sizes: dict | None = None) -> list[Check]:
    """Exercise 5's checks, in order; the speed check at speed_sizes (default: SPEED_SIZES)."""
    judged = [
        Check(ATTENTION, attention_alone),
        Check(RUNS, runs),
        Check(LOGITS, same_logits_inside, needs=(RUNS,)),
        Check(PAST, same_logits_past, needs=(LOGITS,)),
        Check("the same text, greedy (top_k 1)", same_text_greedy, needs=(LOGITS,)),
        Check("the same text, sampled with the same seed", same_text_sampled, needs=(LOGITS,)),
        Check("a prompt longer than block_size", long_prompt, needs=(LOGITS,)),
        Check("each sequence of a batch on its own", batch_apart, needs=(LOGITS, PAST)),
        Check("a new cache for each call", new_cache_each_call, needs=(LOGITS, PAST)),
        Check("no dropout in eval mode", no_dropout_in_eval, needs=(LOGITS, PAST)),
        Check("the work per new character does not grow with the context", work_per_character, needs=(LOGITS,)),
        Check("training unchanged: stage 10's weights, forward and loss", training_unchanged, needs=(RUNS,)),
    ]
    every = [*judged, Check("speed", speed(speed_sizes or SPEED_SIZES), needs=(LOGITS,))]
    return [dataclasses.replace(check, run=one_thread(check.run)) for check in every]
