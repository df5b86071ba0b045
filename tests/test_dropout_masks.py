"""--dropout_masks quick: nn.Dropout's rule with cheaper random numbers (harness/dropout.py)."""

import dataclasses

import pytest
import torch
from torch import nn

from conftest import STAGE_IDS, build, load_stage, stages_from, tiny_flags
from harness.dropout import LEVELS, QuickDropout, quick_masks

N = 1_000_000  # activations: a zeroed fraction is within 0.002 of p (4 standard deviations or more)


def zeroed(out: torch.Tensor) -> float:
    return (out == 0).float().mean().item()


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_zeroes_a_fraction_p_and_scales_the_kept_so_the_mean_stays(p):
    torch.manual_seed(0)
    out = QuickDropout(p).train()(torch.ones(N))
    assert abs(zeroed(out) - p) < 0.002
    rounded = round(p * LEVELS) / LEVELS
    kept = out[out != 0]
    assert torch.all(kept == 1 / (1 - rounded))  # every kept activation scaled alike
    assert abs(out.mean().item() - 1) < 0.01


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_each_of_the_four_numbers_cut_from_a_draw_is_uniform(p):
    """The four 16-bit numbers of one 64-bit draw: a sign bit that never varies would keep a lane whole,
    and low bits that never vary would move p's cut (0.1 tests more than the sign)."""
    torch.manual_seed(0)
    lanes = (QuickDropout(p).train()(torch.ones(N)) == 0).float().view(-1, 4)
    assert torch.all((lanes.mean(0) - p).abs() < 0.004)
    # neighbours decide independently: both zeroed p * p of the time, as two coin flips
    assert abs((lanes[:, 0] * lanes[:, 1]).mean().item() - p * p) < 0.004


def test_its_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.rand(4, 8, 16) + 1  # no zeros of its own
    x.requires_grad_(True)
    out = QuickDropout(0.2).train()(x)
    out.sum().backward()
    scale = 1 / (1 - round(0.2 * LEVELS) / LEVELS)
    torch.testing.assert_close(x.grad, (out != 0).float() * scale)
    torch.testing.assert_close(out, x.detach() * x.grad)


def test_in_eval_mode_and_at_p_0_it_is_the_identity_and_at_p_1_it_zeroes_all():
    x = torch.randn(3, 5)
    assert QuickDropout(0.3).eval()(x) is x
    assert QuickDropout(0.0).train()(x) is x
    assert torch.all(QuickDropout(1.0).train()(x) == 0)


def test_in_place_changes_the_input_as_nn_dropout_does():
    torch.manual_seed(0)
    x = torch.ones(1000)
    out = QuickDropout(0.5, inplace=True).train()(x)
    assert out.data_ptr() == x.data_ptr() and 0.4 < zeroed(x) < 0.6


def test_the_masks_come_from_torchs_seed():
    x = torch.ones(4096)
    torch.manual_seed(7)
    a = QuickDropout(0.1).train()(x)
    torch.manual_seed(7)
    b = QuickDropout(0.1).train()(x)
    torch.manual_seed(8)
    c = QuickDropout(0.1).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("stage", stages_from(10))
def test_quick_masks_replaces_every_nn_dropout_and_nothing_else(stage):
    module = load_stage(stage)
    model = build(module, dropout=0.1)
    before = {name: type(m) for name, m in model.named_modules()}
    keys = list(model.state_dict())
    model.eval()
    n = quick_masks(model)
    assert n == sum(t is nn.Dropout for t in before.values()) > 0
    after = dict(model.named_modules())
    assert list(after) == list(before)  # the same names: the model prints and saves as before
    for name, m in after.items():
        if before[name] is nn.Dropout:
            assert type(m) is QuickDropout and m.p == 0.1 and not m.training
        else:
            assert type(m) is before[name]
    assert list(model.state_dict()) == keys


def test_a_subclass_of_nn_dropout_keeps_its_own_rule():
    class Other(nn.Dropout):
        pass

    model = nn.Sequential(Other(0.1), nn.Dropout(0.1))
    assert quick_masks(model) == 1
    assert type(model[0]) is Other and type(model[1]) is QuickDropout


@pytest.mark.parametrize("masks", [None, "quick", "torch"])
def test_stage_10_on_a_cpu_trains_with_the_masks_asked_for(masks, small_text_file, tmp_path, run_cli, monkeypatch):
    """Without the flag, quick: the default on a CPU."""
    module = load_stage(stages_from(10)[0])
    built = []

    def language_model(*args):
        built.append(built_model := plain(*args))
        return built_model

    plain = module.LanguageModel
    monkeypatch.setattr(module, "LanguageModel", language_model)
    flags = tiny_flags(module, max_iters=4, eval_interval=2, dropout=0.1)
    flags += ["--data", str(small_text_file), "--checkpoint", str(tmp_path / "c.pt")]
    code, out, err = run_cli(module, flags + (["--dropout_masks", masks] if masks else []))
    assert code == 0, err
    kinds = {type(m) for m in built[0].modules() if isinstance(m, nn.Dropout)}
    quick = masks != "torch"
    assert kinds == ({QuickDropout} if quick else {nn.Dropout})
    assert ("dropout's masks: quick" in out) == quick


def test_only_a_stage_with_dropout_has_the_flag(run_cli):
    for stage in STAGE_IDS:
        code, out, _ = run_cli(load_stage(stage), ["--help"])
        has_dropout = any(f.name == "dropout" for f in dataclasses.fields(load_stage(stage).Config))
        assert code == 0 and ("--dropout_masks {quick,torch}" in out) == has_dropout


def test_a_resumed_run_with_quick_masks_is_the_uninterrupted_run(small_text_file, tmp_path, run_cli):
    """The masks' bits come from torch's generator, whose state each checkpoint saves."""
    module = load_stage(stages_from(10)[0])
    straight, split = tmp_path / "straight.pt", tmp_path / "split.pt"
    data = ["--data", str(small_text_file)]
    for ckpt, steps in ((straight, 8), (split, 4)):
        flags = tiny_flags(module, max_iters=steps, eval_interval=4, dropout=0.1)
        assert run_cli(module, [*flags, *data, "--checkpoint", str(ckpt)])[0] == 0
    code, out, err = run_cli(module, ["--resume", "--checkpoint", str(split), *data, "--max_iters", "8"])
    assert code == 0, err
    assert "dropout's masks: quick" in out
    a, b = torch.load(straight, weights_only=True), torch.load(split, weights_only=True)
    assert a["step"] == b["step"] == 8
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=0)
