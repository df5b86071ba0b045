"""Exercise 1's checks: the learner's CausalSelfAttention against stage 10's MultiHeadAttention.

The checks run at a small size with several heads whose head_size (8) is not n_embd (24), so that a
scale by n_embd, or heads mixed up by a reshape, shows. Outputs and gradients are compared within
TOLERANCE: float32 sums the same products in another order in the two forms, nothing more.
"""

from __future__ import annotations

import functools
import statistics
import time
from types import ModuleType

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

import common
from exercises import learner_stage
from exercises.checks import Check, Failed

NAME = "ex1_causal_self_attention"
N_EMBD, N_HEAD, BLOCK = 24, 3, 8
HEAD_SIZE = N_EMBD // N_HEAD  # 8: not n_embd
VOCAB = 20
TOLERANCE = 1e-5  # largest difference allowed, outputs and gradients alike
# the dropout rate the checks configure: not stage 10's 0.2, so that a rate written into the code
# instead of config.dropout shows; 0.2 and 0.4 are told apart (over 32,400 draws the spread is 0.003)
RATE, RATE_TOLERANCE = 0.3, 0.03
TRAIN_STEPS, LOSS_TOLERANCE = 30, 1e-4  # the model check: steps, and relative difference of the losses


@functools.cache
def per_head() -> ModuleType:
    """Stage 10 as it is: the reference."""
    return learner_stage.stage_10_with(None)


def config(**overrides):
    sizes = dict(batch_size=4, block_size=BLOCK, n_embd=N_EMBD, n_head=N_HEAD, n_layer=2, dropout=0.0)
    return per_head().Config(**{**sizes, **overrides})


def learner_class(module: ModuleType) -> type:
    cls = getattr(module, "CausalSelfAttention", None)
    if not isinstance(cls, type):
        raise Failed("the file has no class CausalSelfAttention: keep the name the exercise gives it")
    return cls


def copy_heads(heads: nn.Module, mine: nn.Module) -> None:
    """Stage 10's per-head weights into the learner's layout: head h's rows h*hs .. (h+1)*hs - 1."""
    with torch.no_grad():
        for name in ("query", "key", "value"):
            stacked = torch.cat([getattr(h, name).weight for h in heads.heads], dim=0)  # (nh * hs, C)
            layer = getattr(mine, name, None)
            if not isinstance(layer, nn.Linear) or layer.weight.shape != stacked.shape:
                raise Failed(
                    f"self.{name} is not the layer the exercise fixes (nn.Linear(n_embd, n_head * head_size, "
                    "bias=False)): keep the given __init__"
                )
            layer.weight.copy_(stacked)
        proj = getattr(mine, "proj", None)
        if not isinstance(proj, nn.Linear) or proj.weight.shape != heads.proj.weight.shape or proj.bias is None:
            raise Failed(
                "self.proj is not the layer the exercise fixes (nn.Linear(n_head * head_size, n_embd)): "
                "keep the given __init__"
            )
        proj.load_state_dict(heads.proj.state_dict())


def pair(module: ModuleType, seed: int = 0, **overrides) -> tuple[nn.Module, nn.Module]:
    """Stage 10's MultiHeadAttention and the learner's module, with the same weights."""
    cfg = config(**overrides)
    torch.manual_seed(seed)
    heads = per_head().MultiHeadAttention(cfg, N_HEAD, HEAD_SIZE)
    mine = learner_class(module)(cfg, N_HEAD, HEAD_SIZE)
    copy_heads(heads, mine)
    return heads, mine


def inputs(length: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, N_EMBD, generator=torch.Generator().manual_seed(seed))  # (B, T, C)


# -- the checks ---------------------------------------------------------------------------------


def runs(module: ModuleType) -> None:
    _, mine = pair(module)
    for T in (BLOCK, 5):
        out = mine(inputs(T))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        if shape != (2, T, N_EMBD):
            raise Failed(f"for an input of shape (2, {T}, {N_EMBD}) forward returns {shape}, not (B, T, C)")


def why_outputs_differ(mine: nn.Module, heads: nn.Module, x: torch.Tensor, out: torch.Tensor) -> str:
    """A hint for the usual mistakes, each recognised by what it does to the output."""
    with torch.no_grad():
        for h in heads.heads:  # stage 10 scaled by n_embd**-0.5 instead: the same as shrinking q
            h.query.weight.mul_((HEAD_SIZE / N_EMBD) ** 0.5)
        by_n_embd = heads(x)
        for h in heads.heads:
            h.query.weight.div_((HEAD_SIZE / N_EMBD) ** 0.5)
        reference = heads(x)
    if (out - by_n_embd).abs().max() <= TOLERANCE:
        return "your scores are scaled by n_embd**-0.5; scale them by head_size**-0.5, as stage 10's Head does"
    per_position = (out - reference).abs().amax(dim=(0, 2))  # (T,)
    if per_position[-1] <= TOLERANCE and per_position[:-1].max() > TOLERANCE:
        return "the last position agrees and the others do not: your mask lets the future in"
    return (
        "one place to look is the split into heads and back: view(B, T, n_head, head_size).transpose(1, 2), "
        "and after the weights times v, transpose(1, 2) before view(B, T, C); others: the scale, the softmax's "
        "dim, the projection"
    )


def same_outputs(module: ModuleType) -> str:
    heads, mine = pair(module)
    heads.eval(), mine.eval()
    for T in (BLOCK, 5):
        x = inputs(T)
        with torch.no_grad():
            out, expected = mine(x), heads(x)
        gap = (out - expected).abs()
        if gap.max() > TOLERANCE:
            where = int(gap.amax(dim=(0, 2)).argmax())
            raise Failed(
                f"with stage 10's weights copied in, the output differs from its heads' by up to "
                f"{gap.max():.2g} (position {where}, T = {T}): {why_outputs_differ(mine, heads, x, out)}"
            )
    return f"within {TOLERANCE:g}, for T = {BLOCK} (block_size) and T = 5"


def backward_both(module: ModuleType, length: int = BLOCK) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """Both forms, their outputs pulled back along the same random direction: (heads, mine, x's grads)."""
    heads, mine = pair(module)
    heads.eval(), mine.eval()
    x_heads, x_mine = inputs(length).requires_grad_(), inputs(length).requires_grad_()
    direction = torch.randn(2, length, N_EMBD, generator=torch.Generator().manual_seed(1))
    (heads(x_heads) * direction).sum().backward()
    out = mine(x_mine)
    if out.requires_grad:
        (out * direction).sum().backward()
    return heads, mine, x_heads.grad, x_mine.grad


def same_input_gradients(module: ModuleType) -> str:
    for T in (BLOCK, 5):
        _, _, expected, got = backward_both(module, T)
        if got is None:
            raise Failed("no gradient reaches the input: something cuts the graph (.detach(), .data or torch.no_grad)")
        gap = (got - expected).abs().max()
        if gap > TOLERANCE:
            raise Failed(
                f"the gradient with respect to the input differs from stage 10's by up to {gap:.2g} (T = {T}): "
                "does part of the path from x to q, k or v leave the graph (.detach(), .data)?"
            )
    return f"within {TOLERANCE:g}"


def same_parameter_gradients(module: ModuleType) -> str:
    heads, mine, _, _ = backward_both(module)
    expected = {
        name: torch.cat([getattr(h, name).weight.grad for h in heads.heads]) for name in ("query", "key", "value")
    }
    expected |= {"proj": heads.proj.weight.grad, "proj.bias": heads.proj.bias.grad}
    got = {name: getattr(mine, name).weight.grad for name in ("query", "key", "value", "proj")}
    got["proj.bias"] = mine.proj.bias.grad
    for name, grad in got.items():
        shown = f"self.{name}" if "." in name else f"self.{name}.weight"
        if grad is None or (not grad.any() and expected[name].any()):
            raise Failed(
                f"{shown} gets no gradient, though the output matches: something cuts it from the graph "
                "(.detach(), .data or torch.no_grad)"
            )
        gap = (grad - expected[name]).abs()
        if gap.max() > TOLERANCE:
            if name == "proj.bias":
                rows = ""
            elif name == "proj":  # its columns take the heads' outputs, head by head
                rows = f" (head {int(gap.amax(dim=0).argmax()) // HEAD_SIZE}'s columns)"
            else:
                rows = f" (head {int(gap.amax(dim=1).argmax()) // HEAD_SIZE}'s rows)"
            raise Failed(f"the gradient of {shown} differs from stage 10's heads' by up to {gap.max():.2g}{rows}")
    return f"query, key, value (head by head) and proj within {TOLERANCE:g}"


def causal(module: ModuleType) -> None:
    torch.manual_seed(2)
    mine = learner_class(module)(config(), N_HEAD, HEAD_SIZE).eval()
    x = inputs(BLOCK, batch=1)
    with torch.no_grad():
        out = mine(x)
        for later in range(BLOCK - 1, 0, -1):
            changed = x.clone()
            changed[0, later] += torch.randn(N_EMBD, generator=torch.Generator().manual_seed(later))
            moved = (mine(changed) - out).abs().amax(dim=-1)[0]  # (T,)
            earlier = [t for t in range(later) if moved[t] > 1e-6]
            if earlier:
                raise Failed(
                    f"position {earlier[0]}'s output changes when position {later}'s input does: "
                    "your mask lets the future in"
                )


# the calls that multiply queries by keys, or weights by values: what a loop over the heads repeats
PRODUCTS = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.bmm,
    torch.Tensor.bmm,
    torch.baddbmm,
    torch.mm,
    torch.Tensor.mm,
    torch.einsum,
    F.scaled_dot_product_attention,
}


class CountProducts(TorchFunctionMode):
    """Counts the calls of PRODUCTS made inside it (F.linear, the layers' own product, is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in PRODUCTS
        return func(*args, **(kwargs or {}))


def products_in_a_forward(module: ModuleType, n_head: int) -> int:
    """The attention products in one forward pass of the learner's module with n_head heads, n_embd 32."""
    cfg = config(n_embd=32, n_head=n_head)
    torch.manual_seed(0)
    mine = learner_class(module)(cfg, n_head, 32 // n_head).eval()
    x = torch.randn(2, BLOCK, 32, generator=torch.Generator().manual_seed(0))  # (B, T, C)
    with CountProducts() as counter:
        mine(x)
    return counter.count


def heads_together(module: ModuleType) -> str:
    two, eight = products_in_a_forward(module, 2), products_in_a_forward(module, 8)
    if two != eight:
        raise Failed(
            f"one forward pass makes {two} attention products with 2 heads and {eight} with 8: the heads are "
            "computed one after another; the exercise asks for every head at once, the heads as one more batch "
            "dimension: view(B, T, n_head, head_size).transpose(1, 2), then one q @ k.transpose(-2, -1) for all"
        )
    return f"{two} attention product(s) in a forward pass, with 2 heads as with 8"


def dropout_probe(module: ModuleType, values: str, attn: float, resid: float, proj: str) -> torch.Tensor:
    """The learner's module in training, its weights set so that dropout's work can be read off the output.

    The input at position s is the unit vector e_s, and query and key are zero, so every head weighs
    positions 0..t equally (1 / (t + 1) each). values "one-hot": head h's value at s is e_s, so
    out[t, h * hs + s] is the weight of s for t; "ones": every value is all ones. proj "identity"
    passes the heads' outputs through; "mean" averages them into every channel.
    """
    mine = learner_class(module)(config(dropout=RATE), N_HEAD, HEAD_SIZE).train()
    mine.attn_dropout.p, mine.resid_dropout.p = attn, resid
    with torch.no_grad():
        mine.query.weight.zero_()
        mine.key.weight.zero_()
        value = torch.zeros_like(mine.value.weight)  # (nh * hs, C)
        for h in range(N_HEAD):
            for s in range(BLOCK):
                if values == "one-hot":
                    value[h * HEAD_SIZE + s, s] = 1.0
                else:
                    value[h * HEAD_SIZE : (h + 1) * HEAD_SIZE, s] = 1.0
        mine.value.weight.copy_(value)
        width = N_HEAD * HEAD_SIZE
        mine.proj.weight.copy_(torch.eye(width) if proj == "identity" else torch.full((width, width), 1 / width))
        mine.proj.bias.zero_()
        x = torch.eye(N_EMBD)[:BLOCK].expand(300, BLOCK, N_EMBD)  # (300, T, C): 300 draws of each weight
        torch.manual_seed(3)
        return mine(x)


def dropout_on_the_attention_weights(module: ModuleType) -> str:
    out = dropout_probe(module, "one-hot", attn=RATE, resid=0.0, proj="identity")
    weights = out.reshape(-1, BLOCK, N_HEAD, HEAD_SIZE)[..., :BLOCK].transpose(1, 2)  # (N, nh, t, s)
    causal_weights = weights[..., torch.tril(torch.ones(BLOCK, BLOCK, dtype=torch.bool))]  # s <= t only
    zeroed = (causal_weights == 0).float().mean().item()
    if abs(zeroed - RATE) > RATE_TOLERANCE:
        if zeroed == 0:
            raise Failed(
                f"in training no attention weight is dropped (the configured rate is {RATE:.0%}): apply "
                "self.attn_dropout to the weights after the softmax"
            )
        raise Failed(
            f"in training {zeroed:.1%} of the attention weights are dropped where the configured rate is "
            f"{RATE:.0%}: use self.attn_dropout, whose p is config.dropout"
        )
    out = dropout_probe(module, "ones", attn=RATE, resid=0.0, proj="identity")
    per_head = out.reshape(-1, BLOCK, N_HEAD, HEAD_SIZE)
    if (per_head.amax(dim=-1) - per_head.amin(dim=-1)).max() > 1e-5:
        raise Failed(
            "dropout zeroes single numbers of what the heads give, not whole attention weights: apply "
            "self.attn_dropout to the (B, n_head, T, T) weights after the softmax, as stage 10's Head does"
        )
    return f"{zeroed:.1%} of {causal_weights.numel():,} weights dropped at rate {RATE}"


def dropout_after_the_projection(module: ModuleType) -> str:
    out = dropout_probe(module, "ones", attn=0.0, resid=RATE, proj="mean")  # all ones, but for dropout
    zeroed = (out == 0).float().mean().item()
    if abs(zeroed - RATE) > RATE_TOLERANCE:
        raise Failed(
            f"in training {zeroed:.1%} of the projection's outputs are zeroed where the configured rate is "
            f"{RATE:.0%}: apply self.resid_dropout to what self.proj returns"
        )
    return f"{zeroed:.1%} of {out.numel():,} outputs zeroed at rate {RATE}"


def no_dropout_in_eval(module: ModuleType) -> None:
    heads, mine = pair(module, dropout=0.5)
    heads.eval(), mine.eval()
    x = inputs(BLOCK)
    with torch.no_grad():
        first, second, expected = mine(x), mine(x), heads(x)
    if not torch.equal(first, second) or (first - expected).abs().max() > TOLERANCE:
        raise Failed(
            "in eval mode dropout still acts: nn.Dropout modules switch off there; with F.dropout or "
            "dropout_p, drop only when self.training"
        )


def model_pair(module: ModuleType, **overrides) -> tuple[nn.Module, nn.Module]:
    """Stage 10's model, and stage 10's model with the learner's attention, from the same weights."""
    cfg = config(**overrides)
    torch.manual_seed(0)
    reference = per_head().LanguageModel(VOCAB, cfg)
    batched_stage = learner_stage.stage_10_with(learner_class(module))
    mine = batched_stage.LanguageModel(VOCAB, batched_stage.Config(**vars(cfg)))
    rest = {k: v for k, v in reference.state_dict().items() if ".sa." not in k}
    missing, unexpected = mine.load_state_dict(rest, strict=False)
    assert not unexpected and all(".sa." in k for k in missing), (missing, unexpected)
    for ours, theirs in zip(mine.blocks, reference.blocks, strict=True):
        copy_heads(theirs.sa, ours.sa)
    return reference, mine


def same_losses_in_stage_10(module: ModuleType) -> str:
    reference, mine = model_pair(module)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (reference, mine)]
    batches = torch.Generator().manual_seed(4)
    worst = 0.0
    for step in range(TRAIN_STEPS):
        xb = torch.randint(VOCAB, (4, BLOCK + 1), generator=batches)
        inputs_, targets = xb[:, :-1].contiguous(), xb[:, 1:].contiguous()  # (B, T) each
        losses = []
        for model, optimizer in zip((reference, mine), optimizers, strict=True):
            _, loss = model(inputs_, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        gap = abs(losses[1] - losses[0]) / abs(losses[0])
        worst = max(worst, gap)
        if gap > LOSS_TOLERANCE:
            raise Failed(
                f"in stage 10's model, training from the same weights with dropout 0, the loss at step "
                f"{step} is {losses[1]:.6f} against stage 10's own {losses[0]:.6f}: does something drop at "
                "a rate of its own, or keep state from one call to the next?"
            )
    return f"{TRAIN_STEPS} steps, losses within {worst:.1g} of stage 10's (relative)"


def speed(sizes: dict, steps: int):
    def report(module: ModuleType) -> str:
        device = common.choose_device()
        reference, mine = model_pair(module, **sizes)
        batch, block = sizes["batch_size"], sizes["block_size"]
        timings = {"per head": [], "yours": []}
        xb = torch.randint(VOCAB, (batch, block + 1), generator=torch.Generator().manual_seed(5)).to(device)
        xb, yb = xb[:, :-1].contiguous(), xb[:, 1:].contiguous()  # (B, T) inputs and targets
        for rounds in range(4):  # the first round warms up; then the two alternate, as the noise does
            for name, model in (("per head", reference), ("yours", mine)):
                model.to(device)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                t0 = time.perf_counter()
                for _ in range(steps):
                    _, loss = model(xb, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elif device.type == "mps":
                    torch.mps.synchronize()
                if rounds:
                    timings[name].append((time.perf_counter() - t0) / steps * 1000)
        per_head_ms, yours_ms = (statistics.median(timings[n]) for n in ("per head", "yours"))
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        return (
            f"{per_head_ms:.1f} ms a training step per head, {yours_ms:.1f} ms yours "
            f"({per_head_ms / yours_ms:.2f}x), on {device} at {shown} (reported, not judged)"
        )

    return report


CPU_SIZES = {
    k: learner_stage.stage_10_with(None).PRESETS["cpu"][k]
    for k in ("batch_size", "block_size", "n_embd", "n_head", "n_layer")
}


SHAPE, OUTPUTS, GRADIENTS = (
    "shape: (B, T, C) in and out",
    "same outputs as stage 10's heads",
    "same parameter gradients",
)


def checks(speed_sizes: dict | None = None, speed_steps: int = 5) -> list[Check]:
    """Exercise 1's checks, in order; the speed check at speed_sizes (default: stage 10's cpu preset)."""
    return [
        Check(SHAPE, runs),
        Check(OUTPUTS, same_outputs, needs=(SHAPE,)),
        Check("every head at once: the heads as a batch dimension", heads_together, needs=(SHAPE,)),
        Check("same input gradients", same_input_gradients, needs=(OUTPUTS,)),
        Check(GRADIENTS, same_parameter_gradients, needs=(OUTPUTS,)),
        Check("causal: no output depends on a later position", causal, needs=(SHAPE,)),
        Check(
            "dropout on the attention weights, at the configured rate", dropout_on_the_attention_weights, needs=(SHAPE,)
        ),
        Check("dropout after the projection, at the configured rate", dropout_after_the_projection, needs=(SHAPE,)),
        Check("no dropout in eval mode", no_dropout_in_eval, needs=(OUTPUTS,)),
        Check("stage 10's model trains the same with it", same_losses_in_stage_10, needs=(OUTPUTS, GRADIENTS)),
        Check("speed", speed(speed_sizes or CPU_SIZES, speed_steps), needs=(SHAPE,)),
    ]
