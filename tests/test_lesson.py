"""The lesson's behaviour: what each stage's model and training loop must do, checked from outside.

test_stages.py checks each stage's names, shapes and command line; these tests check that the
lesson works: the stage's own loop learns, the validation loss is the validation split's, every
layer takes part, the feed-forward layer is non-linear, dropout acts where the stage says, attention
is a distribution over the past, and the loss is the next character's. Each one names what a
learner's slip breaks, so that the slip fails the suite under that name.
"""

import contextlib
import io

import pytest
import torch

import common
import harness
import harness.checkpoints
from conftest import (
    SMALL_TEXT,
    STAGE_IDS,
    VOCAB,
    build,
    heads,
    load_stage,
    number,
    stages_from,
    tiny_config,
    tiny_flags,
)

# -- the stage's own training loop, run as a learner runs it -----------------------------------------

# The stage's main() trains here, not a loop of the test's own: a slip in the code the learner reads
# (zero_grad after backward, the wrong batch, no optimizer step) must show up. The rate is higher than
# the stages' own (1e-2 to 3e-4) so that 30 tiny steps make a drop of more than 1 nat in every stage
# (measured: 1.1 to 2.8), twice the 0.5 the test asks for, in well under a second a stage.
LEARNING_FLAGS = dict(max_iters=30, eval_interval=30, batch_size=16, eval_iters=4, learning_rate=3e-2, lr_decay=False)
MIN_DROP = 0.5  # nats the training loss must fall in those steps
MIN_GAP = 0.5  # nats by which the val loss must exceed the train loss at the end (measured: 1.0 to 10)


def two_kinds_of_text() -> str:
    """A text whose last 10%, the validation split, is written in letters the first 90% never uses.

    A model trained on the first 90% learns that those letters never come, so its loss on the
    validation split ends far above its training loss; an estimate that read the training split
    under the name "val" would come out close to the training loss instead."""
    n_train = int(0.9 * len(SMALL_TEXT))  # where split_data cuts it
    unseen = str.maketrans("abcdefghijklmnopqrstuvwxyz", "0123456789#$%&*+<=>@[]^_{}")
    return SMALL_TEXT[:n_train] + SMALL_TEXT[n_train:].translate(unseen)


@pytest.fixture(scope="module")
def two_kinds_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("two_kinds") / "two_kinds.txt"
    path.write_text(two_kinds_of_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=STAGE_IDS)
def trained(request, two_kinds_file, tmp_path_factory):
    """One short run of the stage's main() per stage, shared by the tests below: (stage, checkpoint path)."""
    stage = request.param
    module = load_stage(stage)
    ckpt = tmp_path_factory.mktemp(stage) / f"{stage}.pt"
    flags = tiny_flags(module, **LEARNING_FLAGS) + ["--data", str(two_kinds_file), "--checkpoint", str(ckpt)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # a module fixture has no capsys
        code = harness.run_main(module.main, flags)
    assert code == 0, err.getvalue()
    return stage, ckpt


def test_each_stage_own_training_loop_lowers_the_training_loss(trained):
    stage, ckpt = trained
    history = harness.checkpoints.read_history(ckpt.with_suffix(".history.csv"))
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    assert last < first - MIN_DROP, f"{stage}'s own loop: train loss {first:.3f} -> {last:.3f} in 30 steps"


def test_each_stage_logs_the_val_loss_of_the_validation_split(trained):
    stage, ckpt = trained
    history = harness.checkpoints.read_history(ckpt.with_suffix(".history.csv"))
    first, last = history[0], history[-1]
    if last["train_loss"] > first["train_loss"] - MIN_DROP:  # a model that learned nothing predicts both alike
        pytest.skip("the loop did not learn, so the splits cannot be told apart (the test above fails for it)")
    assert last["val_loss"] > last["train_loss"] + MIN_GAP, (
        f"{stage}: val loss {last['val_loss']:.3f} is close to train loss {last['train_loss']:.3f} on a text whose "
        "validation split uses letters the training split never does: it was not computed on the validation split"
    )


def test_each_stage_loop_takes_the_lecture_steps_one_clean_batch_at_a_time(trained, two_kinds_file):
    """The stage's weights after its run equal those of the lecture's loop, replayed here step for step.

    The loss going down does not catch every slip: without optimizer.zero_grad() the gradients of all
    earlier batches pile up, and AdamW still makes progress. Here each step must be exactly one batch
    from the training split, its own gradient, one AdamW step."""
    stage, ckpt = trained
    module = load_stage(stage)
    saved = torch.load(ckpt, weights_only=True)
    cfg = module.Config(**saved["config"])  # as the run resolved it
    text = two_kinds_file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(ch) for ch in text])
    train = ids[: int(0.9 * len(ids))]
    seed = 1337  # the stages' default --seed: it seeds the weights and the training batches
    common.seed_everything(seed)
    model = module.LanguageModel(len(chars), cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, fused=True)
    batches = torch.Generator().manual_seed(seed)
    for _ in range(cfg.max_iters):
        xb, yb = common.get_batch(train, cfg.batch_size, cfg.block_size, batches)
        _, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for name, weights in model.state_dict().items():
        torch.testing.assert_close(
            saved["model"][name], weights, msg=lambda m, n=name: f"{stage}'s loop trained {n} differently: {m}"
        )


def test_start_trains_on_the_first_ninety_percent_and_validates_on_the_last_ten(two_kinds_file):
    """What harness.start hands a stage: run.data["train"] and run.data["val"], the text's own two parts."""
    module = load_stage(STAGE_IDS[0])
    text = two_kinds_file.read_text(encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        run = harness.start(module.__file__, module.Config, module.__doc__, ["--data", str(two_kinds_file)])
    decode = run.tokenizer.decode
    n_train = int(0.9 * len(text))
    assert decode(run.data["train"].tolist()) == text[:n_train], "run.data['train'] is not the first 90% of the text"
    assert decode(run.data["val"].tolist()) == text[n_train:], "run.data['val'] is not the last 10% of the text"


# -- every part of the model takes part -----------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_every_parameter_gets_a_gradient(stage):
    """A layer built but never called, or called but not added in (a position table, ln2, ln_f, proj),
    trains nothing: one backward pass leaves its gradient empty or zero."""
    module = load_stage(stage)
    model = build(module)
    block = tiny_config(module).block_size  # every row of the position table is used
    idx = torch.randint(VOCAB, (4, block), generator=torch.Generator().manual_seed(0))
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{stage}: {dead[0]} gets no gradient (and {len(dead) - 1} more): it takes no part in the loss"


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_the_position_of_a_token_changes_its_prediction_from_stage_02_on(stage):
    """The same character at every position: from stage 02 on the position embedding must tell the
    positions apart (a table built but not added, or looked up at the wrong index, does not); the
    bigram of stage 01 cannot."""
    module = load_stage(stage)
    model = build(module).eval()
    block = tiny_config(module).block_size
    logits, _ = model(torch.full((1, block), 7))
    # a margin, not allclose: rounding alone moves logits near 0 by 1e-7, past allclose's relative tolerance
    varies = (logits[0] - logits[0, :1]).abs().max().item() > 1e-3  # real differences are about 1
    assert varies == (number(stage) >= 2), (
        f"{stage}: one character at every position, {'different' if varies else 'the same'} logits"
    )


# -- the feed-forward layer and dropout ----------------------------------------------------------------


@pytest.mark.parametrize("stage", stages_from(6))
def test_the_feed_forward_layer_is_not_affine(stage):
    """Without its non-linearity the feed-forward layer is affine, f(x) + f(y) - f(z) = f(x + y - z),
    and a stack of them collapses into one linear map."""
    module = load_stage(stage)
    model = build(module).eval()
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "FeedForward"]
    assert found, f"{stage} has no FeedForward"
    x, y, z = torch.randn(3, 4, 8, tiny_config(module).n_embd, generator=torch.Generator().manual_seed(0))
    for name, ffwd in found:
        gap = (ffwd(x) + ffwd(y) - ffwd(z) - ffwd(x + y - z)).abs().max().item()
        assert gap > 1e-3, f"{stage}: {name} is affine (no non-linearity): f(x) + f(y) - f(z) = f(x + y - z)"


@pytest.mark.parametrize("stage", stages_from(10))
def test_dropout_acts_in_training_at_the_configured_rate_and_not_in_eval(stage):
    module = load_stage(stage)
    idx = torch.randint(VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))
    model = build(module, dropout=0.2)
    assert not torch.equal(model(idx)[0], model(idx)[0]), "in training, dropout makes two passes differ"
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0]), "in eval mode, dropout is off: two passes agree"
    model = build(module, dropout=0.0).train()
    assert torch.equal(model(idx)[0], model(idx)[0]), "with --dropout 0 training is deterministic: the rate is Config's"


@pytest.mark.parametrize("stage", stages_from(10))
def test_every_dropout_layer_zeroes_the_configured_fraction(stage):
    """Each nn.Dropout, in training, zeroes about Config's rate of what reaches it: not half of it, not twice.

    The model is built (and dropout's draws are made) from fixed seeds: the fractions are the same every run.
    Over 1,000 and more values each, a fraction's spread is about 0.015, so 0.06 is four of them."""
    module = load_stage(stage)
    rate = 0.3
    model = build(module, dropout=rate).train()
    seen = {}  # layer name -> (values that reached it, of them zeroed)
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Dropout):

            def count(mod, args, out, name=name):
                live = args[0] != 0  # the attention's future is 0 before dropout: not dropout's doing
                seen[name] = (live.sum().item(), (live & (out == 0)).sum().item())

            layer.register_forward_hook(count)
    torch.manual_seed(0)
    model(torch.randint(VOCAB, (32, 8), generator=torch.Generator().manual_seed(0)))
    assert seen, f"{stage} has no nn.Dropout"
    for name, (live, zeroed) in seen.items():
        assert live > 1000
        assert zeroed / live == pytest.approx(rate, abs=0.06), f"{stage}: {name} zeroes {zeroed / live:.2f}, not {rate}"


@pytest.mark.parametrize("stage", stages_from(10))
def test_every_dropout_layer_is_applied_on_the_way_to_the_logits(stage):
    """Each nn.Dropout must act on what flows on: after the attention softmax, after each projection.

    Silencing one dropout layer's output (a forward hook that returns zeros) must change the logits;
    a layer that is never called, or whose output is thrown away, changes nothing."""
    module = load_stage(stage)
    model = build(module, dropout=0.0)  # in training mode, but the rate 0 keeps every pass the same
    idx = torch.randint(VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    logits, _ = model(idx)
    dropouts = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts, f"{stage} has no nn.Dropout"
    for name, layer in dropouts:
        handle = layer.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
        silenced, _ = model(idx)
        handle.remove()
        assert not torch.equal(silenced, logits), f"{stage}: the dropout {name} is never applied"


# -- attention: a distribution over the past ---------------------------------------------------------


def one_hot_positions(like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like (B, T, C), C >= T, whose position t holds the unit vector e_t.

    Mixed by weights W (out = W @ this), the result's first T channels are W itself: it reads the
    weights a head really applies off its output."""
    _, n, channels = like.shape  # (B, T, C)
    assert channels >= n, "the channels must be able to hold one unit vector per position"
    out = torch.zeros_like(like)
    out[:, :, :n] = torch.eye(n)
    return out


def check_distribution_over_the_past(stage: str, name: str, wei: torch.Tensor) -> None:
    """wei (B, T, T): each query's weights over the keys are a probability distribution over the past."""
    block = wei.shape[-1]
    future = torch.triu(torch.ones(block, block, dtype=torch.bool), diagonal=1)
    assert (wei[:, future] == 0).all(), f"{stage}: {name} puts weight on the future (above the diagonal)"
    assert (wei >= 0).all(), f"{stage}: {name} applies negative weights"
    torch.testing.assert_close(
        wei.sum(-1), torch.ones(wei.shape[:-1]), msg=f"{stage}: {name}'s weights do not sum to 1 over the keys"
    )


@pytest.mark.parametrize("stage", stages_from(4))
def test_every_head_applies_softmax_of_its_scaled_queries_and_keys_over_the_past(stage):
    """In a whole model's forward pass (every layer, every head), the weights each head applies to
    its values are softmax(q kT / sqrt(head_size)) under the causal mask, from its own query and key.

    A hook hands each head one-hot values, so that its output is the weights it applied, whatever
    its code computed them from; another keeps each head's input to recompute them from."""
    module = load_stage(stage)
    model = build(module).eval()
    found = [(n, m) for n, m in model.named_modules() if any(m is h for h in heads(model))]
    seen = {}
    for name, head in found:
        head.value.register_forward_hook(lambda mod, args, out: one_hot_positions(out))
        head.register_forward_hook(lambda mod, args, out, name=name: seen.update({name: (args[0], out)}))
    block = tiny_config(module).block_size
    model(torch.randint(VOCAB, (3, block), generator=torch.Generator().manual_seed(0)))
    assert set(seen) == {n for n, _ in found}, (
        f"{stage}: heads never called: {sorted({n for n, _ in found} - set(seen))}"
    )
    for name, head in found:
        x, out = seen[name]
        wei = out[..., :block]  # (B, T, T) the weights it applied
        check_distribution_over_the_past(stage, name, wei)
        q, k = head.query(x), head.key(x)  # (B, T, head_size) each
        scores = (q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5).masked_fill(
            torch.ones(block, block).triu(1) == 1, -torch.inf
        )
        torch.testing.assert_close(
            wei, torch.softmax(scores, dim=-1), msg=f"{stage}: {name} does not apply softmax(q kT / sqrt(head_size))"
        )
        assert (out[..., block:] == 0).all(), f"{stage}: {name}'s output is not its weights times its values"


@pytest.mark.parametrize("stage", stages_from(3)[:1])
def test_the_causal_average_weighs_each_position_and_its_past_equally(stage):
    """Stage 03's CausalAverage, inside the model: position t is the plain mean of positions 0..t."""
    module = load_stage(stage)
    model = build(module).eval()
    seen = []
    model.average.register_forward_pre_hook(lambda mod, args: (one_hot_positions(args[0]),))
    model.average.register_forward_hook(lambda mod, args, out: seen.append(out))
    block = tiny_config(module).block_size
    model(torch.randint(VOCAB, (2, block), generator=torch.Generator().manual_seed(0)))
    wei = seen[0][..., :block]  # (B, T, T)
    check_distribution_over_the_past(stage, "the causal average", wei)
    uniform = torch.tril(torch.ones(block, block)) / torch.arange(1, block + 1)[:, None]  # row t: 1/(t+1) for 0..t
    torch.testing.assert_close(wei, uniform.expand_as(wei), msg=f"{stage}: the average is not uniform over the past")


# -- the loss --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_the_loss_is_the_cross_entropy_of_the_next_character(stage):
    """The model's loss, computed here on its own: cross-entropy of the logits at position t against
    the character at t + 1, from a real batch of the text, averaged over every position."""
    module = load_stage(stage)
    tok = common.CharTokenizer.from_text(SMALL_TEXT)
    data = tok.encode_text(SMALL_TEXT)
    cfg = tiny_config(module)
    x, y = common.get_batch(data, cfg.batch_size, cfg.block_size, torch.Generator().manual_seed(0))
    assert torch.equal(y[:, :-1], x[:, 1:]), "the targets are the inputs shifted by one"
    torch.manual_seed(0)
    model = module.LanguageModel(tok.vocab_size, cfg).eval()
    logits, loss = model(x, y)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, tok.vocab_size), y.reshape(-1))
    torch.testing.assert_close(loss, expected, msg=f"{stage}: the loss is not the next character's cross-entropy")
