"""The checks of a learner's own stage: a file written along with the video, judged by what it does.

The learner copies the stage before, watches the chapter, and writes the next idea. These checks
build the learner's model at a small size and probe it: which predictions move when a character
changes, what the attention weights do with crafted inputs, whether a sublayer adds to its input.
Where a check must look inside, it finds the parts by what they do, never by their names:

- attention: the smallest module, n_embd wide in and out, whose output at a position moves when an
  earlier position's input does;
- a feed-forward: a module with weights, n_embd wide, that works on each position alone, outside
  attention, and is not a norm (a norm gives the same output for twice its input);
- a block: the smallest module that holds one attention and the feed-forward after it.

Then a short run of the file's own main() trains, saves a checkpoint into a temporary folder and
samples; its val loss is weighed against the project's own stage at the same short budget, across
seeds (`python exercises/stage_band.py` measures that band into benchmarks/results.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import statistics
import tempfile
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn
from torch import Tensor

import harness
import harness.checkpoints
import tools.stages
from exercises import learner_stage
from exercises.checks import Check, Failed

NUMBERS = range(2, 11)  # the stages a learner writes: 01's bigram is where the copying starts
VOCAB = 20
# small, with head_size (8) not n_embd (24), so that a scale by n_embd, or one head for n_head, shows
SIZES = dict(batch_size=4, block_size=8, n_embd=24, n_head=3, n_layer=2, dropout=0.0)
T = SIZES["block_size"]
RATE, RATE_TOLERANCE = 0.3, 0.04  # the dropout rate the checks configure: not stage 10's own 0.1 or 0.2
# the short run: the project's stage's own sizes (stage 10: its cpu preset), these steps, this estimate
STEPS = {n: 300 for n in range(2, 10)} | {10: 100}
EVAL_ITERS = 20
SEED = 1337
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results.json"
BAND_FIGURE = "check stage: val loss after the check's short run of each stage"
SPREADS = 5  # the band: the stage's mean val loss across seeds, plus this many standard deviations


@functools.cache
def reference(number: int) -> ModuleType:
    """The project's own stage number: the answer the learner's file is weighed against."""
    return tools.stages.load_stage(f"{number:02d}")


def field_names(number: int) -> list[str]:
    return [f.name for f in dataclasses.fields(reference(number).Config)]


def config(module: ModuleType, number: int, **overrides):
    """The learner's Config at the checks' small SIZES, for each field that the stage has."""
    values = {k: v for k, v in {**SIZES, **overrides}.items() if k in field_names(number)}
    return module.Config(**values)


def build(module: ModuleType, number: int, seed: int = 0, **overrides) -> nn.Module:
    """The learner's model at the small size, in eval mode, its weights drawn from seed."""
    torch.manual_seed(seed)
    return module.LanguageModel(VOCAB, config(module, number, **overrides)).eval()


def logits_of(model: nn.Module, idx: Tensor, targets: Tensor | None = None) -> Tensor:
    out = model(idx) if targets is None else model(idx, targets)
    return out[0] if isinstance(out, tuple) else out


def ids(length: int, seed: int = 0, batch: int = 1) -> Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))  # (B, T)


def head_size(number: int) -> int:
    return SIZES["n_embd"] if number == 4 else SIZES["n_embd"] // SIZES["n_head"]


# -- the short run -----------------------------------------------------------------------------


def budget_flags(number: int, seed: int = SEED) -> list[str]:
    """The flags of the short run: every field of the stage's Config at the project's own values (stage
    10: its cpu preset), STEPS[number] steps and one loss estimate of EVAL_ITERS batches at each end."""
    cfg = learner_stage.resolved_config(reference(number), ["--device", "cpu"])
    values = vars(cfg) | dict(max_iters=STEPS[number], eval_interval=STEPS[number], eval_iters=EVAL_ITERS)
    flags = [item for k, v in values.items() for item in (f"--{k}", str(v))]
    return [*flags, "--seed", str(seed), "--device", "cpu", "--num_tokens", "200"]


@dataclasses.dataclass
class ShortRun:
    val_loss: float
    checkpoint_saved: bool
    sample: str


SHORT_RUNS: dict[tuple[str, bytes, int, int], ShortRun] = {}  # by file, its text, stage and seed


def short_run(module: ModuleType, number: int, seed: int = SEED) -> ShortRun:
    """module's own main() at the short budget, its checkpoint and sample in a temporary folder (never
    the project's checkpoints/), its printing kept from the check's lines."""
    key = (module.__file__, Path(module.__file__).read_bytes(), number, seed)
    if key in SHORT_RUNS:
        return SHORT_RUNS[key]
    with tempfile.TemporaryDirectory() as folder:
        ckpt = Path(folder) / "stage.pt"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            module.main([*budget_flags(number, seed), "--checkpoint", str(ckpt)])
        history = harness.checkpoints.read_history(harness.checkpoints.history_path(ckpt))
        sample_path = ckpt.with_suffix(".sample.txt")
        sample = sample_path.read_text(encoding="utf-8") if sample_path.exists() else ""
        if not history:
            raise Failed("main() ran but estimated no loss: keep the stage's loop, with trainer.log_estimate")
        SHORT_RUNS[key] = ShortRun(history[-1]["val_loss"], ckpt.exists(), sample)
    return SHORT_RUNS[key]


# -- finding the parts by what they do ------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One call of a submodule during a forward pass: its arguments, the first a (B, T, width) input."""

    module: nn.Module
    args: tuple
    out: Tensor

    def again(self, x: Tensor) -> Tensor:
        return self.module(x, *self.args[1:])


def calls(model: nn.Module, idx: Tensor) -> list[Call]:
    """The calls of model's submodules that take and give (B, T, width) float tensors, in the order
    they end (a part before what holds it)."""
    found: list[Call] = []

    def record(module, args, out):
        if args and isinstance(args[0], Tensor) and args[0].is_floating_point() and args[0].dim() == 3:
            if isinstance(out, Tensor) and out.dim() == 3:
                found.append(
                    Call(module, tuple(a.detach() if isinstance(a, Tensor) else a for a in args), out.detach())
                )

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            logits_of(model, idx)
    finally:
        for handle in handles:
            handle.remove()
    return found


def close(a: Tensor, b: Tensor, tolerance: float = 1e-5) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= tolerance * max(1.0, b.abs().max().item()))


def mixes(call: Call) -> bool:
    """Does the output at the last position move when the input at the first one does?"""
    x = call.args[0].clone()
    x[:, 0] += torch.randn(x.shape[0], x.shape[-1], generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return not close(call.again(x)[:, -1], call.out[:, -1], 1e-6)


def is_inside(part: nn.Module, whole: nn.Module) -> bool:
    return any(m is part for m in whole.modules())


def scale_invariant(call: Call) -> bool:
    """A norm's output does not change when its input is doubled."""
    with torch.no_grad():
        return close(call.again(2 * call.args[0]), call.out, 1e-3)


@dataclasses.dataclass
class Parts:
    calls: list[Call]
    attention: list[Call]  # each attention's call, in order
    feed_forward: list[Call]  # each feed-forward's call, in order
    head: Call | None  # the last call that gives the logits


def parts(model: nn.Module, n_embd: int, idx: Tensor | None = None) -> Parts:
    """The parts of the learner's model, found by what they do (the module's docstring says how)."""
    found = calls(model, ids(T) if idx is None else idx)
    wide = [c for c in found if c.args[0].shape[-1] == n_embd and c.out.shape[-1] == n_embd]
    mixers = [c for c in wide if mixes(c)]
    attention = [
        c for c in mixers if not any(o.module is not c.module and is_inside(o.module, c.module) for o in mixers)
    ]
    outside = [
        c for c in wide if all(c is not m for m in mixers) and not any(is_inside(c.module, a.module) for a in attention)
    ]
    weighted = [c for c in outside if any(True for _ in c.module.parameters()) and not scale_invariant(c)]
    feed_forward = [
        c for c in weighted if not any(o.module is not c.module and is_inside(c.module, o.module) for o in weighted)
    ]
    heads = [c for c in found if c.out.shape[-1] == VOCAB and c.args[0].shape[-1] == n_embd]
    return Parts(found, attention, feed_forward, heads[-1] if heads else None)


def first_attention(model: nn.Module, n_embd: int = SIZES["n_embd"]) -> Call:
    found = parts(model, n_embd).attention
    if not found:
        raise Failed(
            "found no module whose output at a position uses the earlier positions: write the part where "
            "tokens talk as a module of its own (an nn.Module called in forward), as the lecture does"
        )
    return found[0]


# -- every stage: a stage, its shapes, causal, generation -----------------------------------------


def is_a_stage(number: int):
    def run(module: ModuleType) -> str | None:
        missing = [name for name in ("Config", "LanguageModel", "main") if not hasattr(module, name)]
        if missing:
            raise Failed(f"the file has no {', '.join(missing)}: keep the names of stage {number - 1:02d}'s file")
        if not dataclasses.is_dataclass(module.Config):
            raise Failed("Config is not a dataclass: keep @dataclass above it, so that each field is a flag")
        mine = {f.name: f.default for f in dataclasses.fields(module.Config)}
        theirs = {f.name: f.default for f in dataclasses.fields(reference(number).Config)}
        lacking = [k for k in theirs if k not in mine]
        if lacking:
            raise Failed(
                f"Config has no {', '.join(lacking)}: stage {number:02d} has it, and the check sets it with "
                f"--{lacking[0]}; add it as a field"
            )
        learner_stage.resolved_config(module, [])  # its flags parse as the harness parses them
        notes = [f"{k} {mine[k]} (stage {number:02d}: {v})" for k, v in theirs.items() if mine[k] != v]
        notes += [f"{k} is yours alone" for k in mine if k not in theirs]
        return f"defaults that differ: {'; '.join(notes)} (reported, not judged)" if notes else None

    return run


def shapes(number: int):
    def run(module: ModuleType) -> str:
        model = build(module, number)
        for length in (T, 3):
            idx = ids(length, batch=2)
            out = model(idx, idx)
            logits, loss = out if isinstance(out, tuple) else (out, None)
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            if shape == (2, length, SIZES["n_embd"]):
                raise Failed(
                    f"for ids of shape (2, {length}) the logits are {shape}: n_embd wide, not one a character; "
                    "end with lm_head, nn.Linear(n_embd, vocab_size)"
                )
            if shape != (2, length, VOCAB):
                raise Failed(f"for ids of shape (2, {length}) the logits are {shape}, not (B, T, vocab_size)")
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise Failed("with targets, forward must return (logits, loss), the loss one number")
            if not torch.isfinite(loss):
                raise Failed(
                    f"the loss is {loss.item()}: often a row of attention scores all -inf, so softmax divides "
                    "0 by 0; check the mask (a position must see itself) and softmax's dim"
                )
        mine = sum(p.numel() for p in model.parameters())
        theirs = sum(p.numel() for p in build(reference(number), number).parameters())
        if mine == theirs:
            return f"{mine:,} parameters at the check's size, as stage {number:02d}'s"
        more = "more" if mine > theirs else "fewer"
        return f"{mine:,} parameters at the check's size, {more} than stage {number:02d}'s {theirs:,} (not judged)"

    return run


def causal(number: int):
    def run(module: ModuleType) -> None:
        model = build(module, number)
        idx = ids(T)
        with torch.no_grad():
            before = logits_of(model, idx)
            if not torch.equal(logits_of(model, idx), before):
                raise Failed(
                    "in eval mode, two passes over the same characters give other logits: something random still "
                    "acts; dropout must follow the mode (nn.Dropout, or F.dropout(x, p, training=self.training))"
                )
            for later in range(T - 1, 0, -1):
                changed = idx.clone()
                changed[0, later] = (changed[0, later] + 1) % VOCAB
                moved = (logits_of(model, changed) - before).abs().amax(dim=-1)[0]  # (T,)
                earlier = [t for t in range(later) if moved[t] > 1e-5]
                if earlier:
                    which = "the very one it should predict" if later == earlier[0] + 1 else "a later character"
                    raise Failed(
                        f"the prediction at position {earlier[0]} changes when the character at position {later} "
                        f"does: it sees {which}; each position may use itself and the positions before it "
                        "(look at the mask)"
                    )

    return run


def generates(number: int):
    def run(module: ModuleType) -> None:
        model = build(module, number)
        start = torch.zeros((1, 1), dtype=torch.long)
        model.generate(start, T - 1)  # within block_size: an error here is the learner's, shown as it is
        try:
            out = model.generate(start, T + 4)
        except (IndexError, RuntimeError) as e:
            raise Failed(
                f"generate fails once the text is longer than block_size ({T}): crop the context to its last "
                f"block_size characters before each step, idx[:, -block_size:] ({type(e).__name__})"
            ) from None
        if not isinstance(out, Tensor) or tuple(out.shape) != (1, T + 5):
            raise Failed(
                f"generate(idx of shape (1, 1), {T + 4}) returns {getattr(out, 'shape', out)}, not (1, {T + 5})"
            )
        torch.manual_seed(1)
        if torch.equal(model.generate(start, T + 4), out) and torch.equal(model.generate(start, T + 4), out):
            raise Failed(
                "generate gives the same characters whatever the seed: it takes the likeliest one; draw the next "
                "character from the probabilities with torch.multinomial"
            )

        def next_of_each(idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, None]:
            """A model whose every position is sure of the id after its own: (B, T, vocab_size) logits."""
            logits = torch.full((*idx.shape, VOCAB), -1e4)
            return logits.scatter(-1, ((idx + 1) % VOCAB).unsqueeze(-1), 0.0), None

        model.forward = next_of_each  # what generate calls as self(idx) from now on
        wrote = model.generate(torch.tensor([[5, 3]]), 2)[0, 2:].tolist()
        if wrote != [4, 5]:
            raise Failed(
                f"given a model whose every position predicts its own id + 1, generate after ids [5, 3] wrote "
                f"{wrote}, not [4, 5]: the next character comes from the last position, logits[:, -1, :]"
            )

    return run


def trains(number: int):
    def run(module: ModuleType) -> str:
        result = short_run(module, number)
        if not result.checkpoint_saved:
            raise Failed("main() trained but saved no checkpoint: keep trainer.finish() at the end of main()")
        if not result.sample.strip():
            raise Failed("main() trained but printed no sample: keep trainer.finish() at the end of main()")
        return f"{STEPS[number]} steps, val loss {result.val_loss:.4f}, a checkpoint and a sample"

    return run


def band(number: int) -> tuple[float, float, dict]:
    """(mean, standard deviation) of the project's stage's val loss across seeds, and the entry itself."""
    results = json.loads(RESULTS.read_text(encoding="utf-8"))["results"]
    entry = next((r for r in results if r["figure"] == BAND_FIGURE), None)
    losses = (entry or {}).get("val_loss", {}).get(f"{number:02d}")
    if not losses:
        raise Failed(f"{RESULTS} has no band for stage {number:02d}: python exercises/stage_band.py measures it")
    return statistics.mean(losses), statistics.stdev(losses), entry


def within_band(number: int):
    def run(module: ModuleType) -> str:
        mean, spread, entry = band(number)
        mine = short_run(module, number).val_loss
        upper, lower = mean + SPREADS * spread, mean - SPREADS * spread
        seeds = len(entry["seeds"])
        where = (
            f"stage {number:02d}'s mean {mean:.3f}, standard deviation {spread:.3f}, over {seeds} seeds "
            f"on {entry['machine']}, {entry['date']}"
        )
        if mine > upper:
            raise Failed(
                f"val loss {mine:.4f} after {STEPS[number]} steps, above the band's top {upper:.3f} "
                f"({where}): it learns more slowly than the stage; the checks above say what is there, "
                "compare the rest with the stage"
            )
        if mine < lower:
            return f"val loss {mine:.4f}, below the band ({where}): fine for a change made on purpose"
        return f"val loss {mine:.4f}, inside the band from {lower:.3f} to {upper:.3f} ({where})"

    return run


# -- each stage's idea ------------------------------------------------------------------------------


def tokens_alone(module: ModuleType) -> str:
    """02: each prediction depends on its own character and position, and on nothing else."""
    model = build(module, 2)
    idx = ids(T)
    with torch.no_grad():
        before = logits_of(model, idx)
        for earlier in range(T - 1):
            changed = idx.clone()
            changed[0, earlier] = (changed[0, earlier] + 1) % VOCAB
            moved = (logits_of(model, changed) - before).abs().amax(dim=-1)[0]  # (T,)
            later = [t for t in range(earlier + 1, T) if moved[t] > 1e-5]
            if later:
                raise Failed(
                    f"the prediction at position {later[0]} changes when the character at position {earlier} "
                    "does: in stage 02 the tokens do not talk yet; each position's logits come from its own "
                    "character and position alone"
                )
        same = logits_of(model, torch.full((1, T), 3))[0]  # (T, vocab): one character at every position
    if all(close(same[t], same[0]) for t in range(1, T)):
        raise Failed(
            "one character gives the same prediction at every position: the position is not used; add the "
            "position embedding to the token embedding, x = tok_emb + pos_emb"
        )
    return "its own character and its position, nothing else"


def one_hot_weights(module: ModuleType, number: int) -> Tensor:
    """03: the averaging module's weights, read off its output for one-hot inputs: (T, T), row t
    holding position t's weight of each position s."""
    found = first_attention(build(module, number))
    x = torch.eye(SIZES["n_embd"])[:T].unsqueeze(0)  # (1, T, C): position s holds e_s
    with torch.no_grad():
        return found.again(x)[0, :, :T]


def equal_weights(module: ModuleType) -> str:
    wei = one_hot_weights(module, 3)
    sums = wei.sum(dim=-1)
    if close(wei.sum(dim=0), torch.ones(T), 1e-4) and not close(sums, torch.ones(T), 1e-4):
        raise Failed(
            "each column of the weights sums to 1, not each row: the softmax runs over the wrong dimension; "
            "softmax(wei, dim=-1) spreads each position's weight over the positions it reads"
        )
    if not close(sums, torch.ones(T), 1e-4):
        t = int((sums - 1).abs().argmax())
        raise Failed(
            f"position {t}'s weights sum to {sums[t]:.3g}, not 1: an average divides by the count, t + 1 "
            "(or a softmax over the masked zeros does it)"
        )
    for t in range(T):
        if not close(wei[t, : t + 1], torch.full((t + 1,), 1 / (t + 1)), 1e-4):
            shown = " ".join(f"{w:.2f}" for w in wei[t, : t + 1].tolist())
            raise Failed(
                f"position {t} weighs its past unequally ({shown}): stage 03 gives each of positions 0..t the "
                f"same weight, 1/(t + 1)"
            )
    return f"row t of the weights: 1/(t + 1) for positions 0..t, for t = 0..{T - 1}"


def data_dependent(number: int):
    def run(module: ModuleType) -> None:
        found = first_attention(build(module, number))
        x = found.args[0][:1].clone()
        nudge = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(8))
        moved = x.clone()
        moved[0, 0] += nudge  # two earlier inputs change, their mean does not
        moved[0, 1] -= nudge
        with torch.no_grad():
            if close(found.again(moved)[0, -1], found.again(x)[0, -1], 1e-6):
                raise Failed(
                    f"the weights do not depend on the data: position {T - 1}'s output stays put when two "
                    "earlier inputs change and their mean does not, as with stage 03's equal average; weigh by "
                    "softmax(q @ k.transpose(-2, -1)), the queries against the keys"
                )

    return run


def rows_sum_to_one(number: int):
    def run(module: ModuleType) -> None:
        found = first_attention(build(module, number))
        x = torch.randn(1, 1, SIZES["n_embd"], generator=torch.Generator().manual_seed(9)).expand(1, T, -1).clone()
        with torch.no_grad():
            out = found.again(x)[0]  # (T, C): the same input everywhere, so every weight of a row is equal
        if all(close(out[t], out[0], 1e-4) for t in range(1, T)):
            return
        # the outputs lie on a line, at each row's sum of weights; softmax over dim=-2 sums row t to
        # 1/T + ... + 1/(T - t), the sums of the columns' shares
        along = out[-1] - out[0]
        measured = ((out - out[0]) @ along) / (along @ along)  # (T,) 0 at row 0, 1 at row T - 1
        by_column = torch.tensor([sum(1 / (T - s) for s in range(t + 1)) for t in range(T)])
        by_column = (by_column - by_column[0]) / (by_column[-1] - by_column[0])
        if close(measured, by_column, 1e-3):
            raise Failed(
                "with the same input at every position the outputs differ as when each column of the weights sums "
                "to 1: the softmax runs over the queries; softmax(wei, dim=-1) makes each row sum to 1"
            )
        raise Failed(
            "with the same input at every position the output differs from position to position: each row of "
            "the weights must sum to 1 (the softmax, over the last dimension, after the mask)"
        )

    return run


def grads(found: Call, x: Tensor) -> list[Tensor]:
    """The gradients of the attention's parameters, its output pulled back along a fixed direction."""
    params = list(found.module.parameters())
    direction = torch.randn(x.shape[0], x.shape[1], found.out.shape[-1], generator=torch.Generator().manual_seed(10))
    with torch.enable_grad():
        out = found.again(x)
        return list(torch.autograd.grad((out * direction).sum(), params, allow_unused=True))


def query_key_entries(found: Call) -> list[Tensor]:
    """Which numbers of the attention's parameters make queries and keys: the rows (or columns) of a
    weight that get no gradient from the same input at every position (all weights of a row are
    equal there, whatever the scores), in a parameter that a varied input does reach. One boolean
    mask for each parameter."""
    C = found.args[0].shape[-1]
    varied = torch.randn(2, T, C, generator=torch.Generator().manual_seed(11))
    same = varied[:, :1].expand(2, T, C).clone()
    g_varied, g_same = grads(found, varied), grads(found, same)
    top = max((g.abs().max().item() for g in g_same if g is not None), default=0.0)
    masks = []
    for p, gv, gs in zip(found.module.parameters(), g_varied, g_same, strict=True):
        if gv is None or gs is None or not gv.any():
            masks.append(torch.zeros(p.shape, dtype=torch.bool))
            continue
        small = gs.abs() <= 1e-5 * top
        if p.dim() == 2:  # a weight: whole rows (x @ W.T) or whole columns (x @ W) of it
            small = small.all(dim=1, keepdim=True).expand_as(small) | small.all(dim=0, keepdim=True).expand_as(small)
        masks.append(small)
    return masks


def own_heads(number: int):
    def run(module: ModuleType) -> str:
        found = first_attention(build(module, number))
        masks = query_key_entries(found)
        count = sum(int(m.sum()) for m, p in zip(masks, found.module.parameters(), strict=True) if p.dim() >= 2)
        C, heads = SIZES["n_embd"], (1 if number == 4 else SIZES["n_head"])
        expected = 2 * C * heads * head_size(number)
        if count < 0.9 * expected:
            raise Failed(
                f"the queries and keys have {count} weights, where {heads} heads of {head_size(number)} need "
                f"{expected} (2 x n_embd x head_size each): do the heads share one module? Build a new Head for "
                "each, or one layer n_head * head_size wide"
            )
        return f"{count} query and key weights: {heads} head(s) of {head_size(number)}, each its own"

    return run


def measured_scale(found: Call, hs: int) -> float:
    """The attention's scale times sqrt(hs): 1 for scores scaled by hs**-0.5, whatever the layout.

    Every query and key weight is set to 1 (their biases to 0), so that in any head q_t . k_s is
    hs * sum(x_t) * sum(x_s). Two positions whose inputs sum to 2u and u give position 1 the weight
    w = sigmoid(scale * hs * u^2) on position 0, read off the output against each input repeated."""
    masks = query_key_entries(found)
    C = found.args[0].shape[-1]
    u = (0.5 / hs**0.5) ** 0.5  # so that the right scale puts logit(w) at 0.5
    with torch.no_grad():
        for p, mask in zip(found.module.parameters(), masks, strict=True):
            p[mask] = 1.0 if p.dim() >= 2 else 0.0
        r = torch.randn(2, C, generator=torch.Generator().manual_seed(12))
        x0, x1 = (r[i] - r[i].mean() + s * u / C for i, s in ((0, 2), (1, 1)))
        o = found.again(torch.stack([x0, x1])[None])[0, 1]
        a = found.again(torch.stack([x0, x0])[None])[0, 1]
        b = found.again(torch.stack([x1, x1])[None])[0, 1]
    w = float((o - b) @ (a - b) / ((a - b) @ (a - b)))
    return 2 * math.log(w / (1 - w)) if 0 < w < 1 else float("nan")


def scaled_by_head_size(number: int):
    def run(module: ModuleType) -> str:
        found = first_attention(build(module, number))
        hs, C = head_size(number), SIZES["n_embd"]
        measured = measured_scale(found, hs)
        if abs(measured - 1) < 0.03:
            return f"scores times head_size**-0.5 ({hs}**-0.5)"
        known = {
            (hs / C) ** 0.5: (
                f"the scores are scaled by n_embd**-0.5 ({C}**-0.5), as in the video's code; its description "
                f"corrects it: scale by head_size**-0.5 ({hs}**-0.5), k.shape[-1] ** -0.5"
            ),
            hs**0.5: f"the scores are not scaled: multiply q @ k.transpose(-2, -1) by head_size**-0.5 ({hs}**-0.5)",
            (C / hs) ** 0.5: (
                f"the attention acts as one head of n_embd ({C}), scaled by n_embd**-0.5: split it into "
                f"n_head heads of head_size {hs}, each with a softmax of its own"
            ),
            C
            / hs**0.5: f"the attention acts as one head of n_embd ({C}), unscaled: split it into n_head heads of {hs}",
        }
        for value, message in known.items():
            if abs(measured / value - 1) < 0.03:
                raise Failed(message)
        raise Failed(
            f"the scores are scaled by {measured / hs**0.5:.3g} where head_size**-0.5 is {hs**-0.5:.3g}: "
            "multiply q @ k.transpose(-2, -1) by k.shape[-1] ** -0.5"
        )

    return run


def feed_forward(number: int):
    def run(module: ModuleType) -> str:
        found = parts(build(module, number), SIZES["n_embd"])
        if not found.feed_forward:
            raise Failed(
                "found no layer with weights that works on each position alone after attention: call the "
                "feed-forward in forward, x = self.ffwd(x), after the heads"
            )
        ff, attention = found.feed_forward[0], found.attention[0]
        order = [id(c) for c in found.calls]
        if order.index(id(ff)) < order.index(id(attention)):
            raise Failed(
                "the feed-forward runs before attention: attention first gathers from the past, then each "
                "position works on what it gathered"
            )
        x = ff.args[0]
        y = torch.randn(x.shape, generator=torch.Generator().manual_seed(13))
        with torch.no_grad():
            linear = close(ff.again(x) + ff.again(y), ff.again(x + y) + ff.again(torch.zeros_like(x)), 1e-4)
        if linear:
            raise Failed(
                "the feed-forward is linear: two linear layers in a row are one linear layer; put a "
                "non-linearity after its first Linear, nn.ReLU()"
            )
        return f"{type(ff.module).__name__}, after attention, non-linear, each position alone"

    return run


def blocks(module: ModuleType) -> str:
    for n_layer in (2, 3):
        found = parts(build(module, 7, n_layer=n_layer), SIZES["n_embd"])
        distinct = {id(c.module) for c in found.attention}
        if len(found.attention) != n_layer:
            raise Failed(
                f"with n_layer {n_layer} the model runs {len(found.attention)} attention layer(s): build "
                "n_layer blocks, [Block(config) for _ in range(config.n_layer)]"
            )
        if len(distinct) != n_layer:
            raise Failed(
                f"with n_layer {n_layer} the {n_layer} blocks share one set of weights: [Block(config)] * n "
                "repeats one block; build a new Block for each"
            )
        if len(found.feed_forward) != n_layer:
            raise Failed(
                f"with n_layer {n_layer} the model runs {len(found.feed_forward)} feed-forward layer(s): each "
                "block runs attention, then its own feed-forward"
            )
    return "n_layer blocks of attention and feed-forward, each with its own weights (n_layer 2 and 3)"


def ancestors(model: nn.Module, part: nn.Module) -> list[nn.Module]:
    """part, then what holds it, up to model."""
    parent = {id(child): m for m in model.modules() for child in m.children()}
    chain = [part]
    while id(chain[-1]) in parent:
        chain.append(parent[id(chain[-1])])
    return chain


def block_calls(model: nn.Module, found: Parts) -> list[tuple[Call, Call, Call]]:
    """(block, its attention, its feed-forward): the block is the smallest module holding both."""
    out = []
    for attention, ff in zip(found.attention, found.feed_forward, strict=False):
        holds_ff = {id(m) for m in ancestors(model, ff.module)}
        block = next(m for m in ancestors(model, attention.module) if id(m) in holds_ff)
        call = next((c for c in found.calls if c.module is block), None)
        if call is None:
            raise Failed(
                "found no block: put each attention and its feed-forward in a Block module, called on the "
                "stream, as the lecture does"
            )
        out.append((call, attention, ff))
    return out


def with_outputs(block: Call, changes: dict[int, object]) -> tuple[Tensor, dict[int, Tensor]]:
    """The block run again, each part in changes (by id) giving change(its output) instead; with the
    inputs each part received."""
    seen: dict[int, Tensor] = {}
    handles = []

    def hook(m, args, out):
        seen[id(m)] = args[0]
        return changes[id(m)](out)

    for module in {id(m): m for m in block.module.modules()}.values():
        if id(module) in changes:
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return block.again(block.args[0]), seen
    finally:
        for handle in handles:
            handle.remove()


def is_normalised(x: Tensor) -> bool:
    """Each position's numbers at root mean square 1, as a norm (at its initial gain) leaves them."""
    # 0.05: the lecture's own LayerNorm1d divides by the unbiased variance, sqrt((n - 1) / n) off 1
    return bool(((x.pow(2).mean(dim=-1).sqrt() - 1).abs() < 0.05).all())


def residual(number: int):
    def run(module: ModuleType) -> str:
        model = build(module, number)
        found = parts(model, SIZES["n_embd"])
        for block, attention, ff in block_calls(model, found):
            # each sublayer gives a fixed output of its own: what the block returns then says which
            # of them reach it, and whether the block's input still does
            x = block.args[0]
            a, f = (torch.randn(x.shape, generator=torch.Generator().manual_seed(s)) for s in (14, 15))
            out, _ = with_outputs(block, {id(attention.module): lambda o, a=a: a, id(ff.module): lambda o, f=f: f})
            if close(out, x + a + f, 1e-4):
                continue
            if close(out, a + f, 1e-4):
                raise Failed("attention's output replaces the stream instead of adding to it: x = x + self.sa(x)")
            if close(out, f, 1e-4):
                raise Failed(
                    "the feed-forward's output replaces the stream instead of adding to it: x = x + self.ffwd(x)"
                )
            if close(out, x + f, 1e-4):
                raise Failed(
                    "attention's output never reaches the stream by itself: each sublayer adds its own output, "
                    "x = x + self.sa(x), then x = x + self.ffwd(x)"
                )
            if number >= 9 and is_normalised(out):
                raise Failed(
                    "the block's output is normalised: a norm after the addition (post-norm, as in the "
                    "Transformer paper); the lecture's blocks add to a stream they never normalise"
                )
            raise Failed("the block's output is not its input plus each sublayer's output: x = x + self.sa(x)")
        return "each block: x + attention(...), then x + feed-forward(...)"

    return run


def norms(number: int):
    def run(module: ModuleType) -> str:
        model = build(module, number)
        found = parts(model, SIZES["n_embd"])
        for block, attention, ff in block_calls(model, found):
            loud = dataclasses.replace(block, args=(3 * block.args[0], *block.args[1:]))  # far from unit size
            out, seen = with_outputs(loud, {id(attention.module): lambda o: o, id(ff.module): lambda o: o})
            if not is_normalised(seen[id(attention.module)]):
                if is_normalised(out):
                    raise Failed(
                        "the norm comes after the sublayer (post-norm, as in the Transformer paper); stage 09 "
                        "is pre-norm: x = x + self.sa(self.ln1(x))"
                    )
                raise Failed("attention's input is not normalised: x = x + self.sa(self.ln1(x))")
            if not is_normalised(seen[id(ff.module)]):
                raise Failed("the feed-forward's input is not normalised: x = x + self.ffwd(self.ln2(x))")
        if found.head is None or not is_normalised(found.head.args[0]):
            raise Failed("the head reads the stream without a norm: a last LayerNorm, ln_f, before lm_head")
        return "a norm before each sublayer and before the head"

    return run


def dropout_in_eval(module: ModuleType) -> None:
    idx = ids(T, batch=4)
    with torch.no_grad():
        off = logits_of(build(module, 10, dropout=0.0), idx)
        model = build(module, 10, dropout=0.5)  # the same weights: dropout has none
        first, second = logits_of(model, idx), logits_of(model, idx)
    if not close(first, second) or not close(first, off):
        raise Failed(
            "in eval mode dropout still acts: nn.Dropout switches off there by itself; F.dropout needs "
            "training=self.training"
        )


def dropout_rate(module: ModuleType) -> str:
    model = build(module, 10, dropout=RATE)
    idx = ids(T, batch=16)
    found = parts(model, SIZES["n_embd"], idx)
    with torch.no_grad():
        model.train()
        torch.manual_seed(15)
        first, second = logits_of(model, idx), logits_of(model, idx)
        if close(first, second):
            raise Failed(f"no dropout in training: with config.dropout {RATE} two training passes give the same logits")
        shown = []
        for name, call in (("attention", found.attention[0]), ("the feed-forward", found.feed_forward[0])):
            out = call.again(call.args[0])
            zeroed = (out == 0).float().mean().item()
            if zeroed == 0:
                raise Failed(
                    f"in training nothing of {name}'s output is zeroed: stage 10 drops after each sublayer's "
                    "last Linear, nn.Dropout(config.dropout)"
                )
            if abs(zeroed - RATE) > RATE_TOLERANCE:
                raise Failed(
                    f"in training {zeroed:.0%} of {name}'s outputs are zeroed where config.dropout is {RATE:.0%}: "
                    "use nn.Dropout(config.dropout), not a rate of your own"
                )
            shown.append(f"{zeroed:.0%} of {name}'s outputs")
        # dropout after the projection only scales what it keeps by 1 / (1 - p); dropped attention
        # weights change the kept numbers too
        attention = found.attention[0]
        out = attention.again(attention.args[0])
        kept = out != 0
        if close(out[kept] * (1 - RATE), attention.out[kept], 1e-4):
            raise Failed(
                "in training the attention weights are all kept: stage 10 also drops some of them after the "
                "softmax, self.dropout(wei)"
            )
    model.eval()
    return f"{' and '.join(shown)} zeroed in training at config.dropout {RATE}, and attention weights dropped"


# -- the checks of each stage ----------------------------------------------------------------------

STAGE, SHAPES, TRAINS = "a stage: Config, its flags, LanguageModel and main", "shapes and a loss", "trains"
DATA, ROWS = "attention weights that depend on the data", "each row of attention weights sums to 1"
FEED_FORWARD, BLOCKS = "a non-linear feed-forward, each position alone, after attention", "n_layer blocks"


def ideas(number: int) -> list[Check]:
    """The stage's idea, and each idea before it that its model keeps."""
    if number == 2:
        return [Check("each prediction from its own character and position", tokens_alone, needs=(SHAPES,))]
    if number == 3:
        return [Check("equal weights over the past, summing to 1", equal_weights, needs=(SHAPES,))]
    found = [
        Check(DATA, data_dependent(number), needs=(SHAPES,)),
        Check(ROWS, rows_sum_to_one(number), needs=(SHAPES,)),
        Check("heads with their own weights", own_heads(number), needs=(DATA,)),
        Check("scores scaled by head_size**-0.5", scaled_by_head_size(number), needs=(DATA, ROWS)),
    ]
    if number >= 6:
        found.append(Check(FEED_FORWARD, feed_forward(number), needs=(SHAPES,)))
    if number >= 7:
        found.append(Check(BLOCKS, blocks, needs=(SHAPES,)))
    if number >= 8:
        found.append(Check("sublayers that add to the stream", residual(number), needs=(BLOCKS,)))
    if number >= 9:
        found.append(Check("a norm before each sublayer and before the head", norms(number), needs=(BLOCKS,)))
    if number == 10:
        found += [
            Check("no dropout in eval mode", dropout_in_eval, needs=(SHAPES,)),
            Check("dropout in training, at config.dropout", dropout_rate, needs=(FEED_FORWARD,)),
        ]
    return found


def checks(number: int, train: bool = True) -> list[Check]:
    """Stage number's checks, in order; train=False leaves out the short run and its band."""
    listed = [
        Check(STAGE, is_a_stage(number)),
        Check(SHAPES, shapes(number), needs=(STAGE,)),
        Check("causal: no prediction depends on a later character", causal(number), needs=(SHAPES,)),
        Check("generate: crops to block_size and samples", generates(number), needs=(SHAPES,)),
        *ideas(number),
    ]
    if train:
        listed += [
            Check(TRAINS, trains(number), needs=(SHAPES,)),
            Check(f"a short run within stage {number:02d}'s band", within_band(number), needs=(TRAINS,)),
        ]
    return listed
