"""Every stage: its names, its model's behaviour, and its command line end to end, at tiny sizes."""

import dataclasses
import inspect
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import harness
import harness.checkpoints
import harness.cli
import harness.errors
import tools.stages
from conftest import STAGE_IDS, VOCAB, build, load_stage, number, one_line_error, stages_from, tiny_config, tiny_flags


@pytest.fixture(params=STAGE_IDS)
def stage(request):
    return request.param


# -- names and import ------------------------------------------------------------------------------


def test_import_reads_no_data_and_trains_nothing(stage, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("importing a stage must not read data or train")

    monkeypatch.setattr(harness.cli, "load_text", forbidden)
    monkeypatch.setattr(harness, "start", forbidden)
    module = load_stage(stage)
    for name in ("Config", "LanguageModel", "main"):
        assert hasattr(module, name), f"{stage} has no {name}"
    fields = set(module.Config.__dataclass_fields__)
    assert {"batch_size", "block_size", "max_iters", "eval_interval", "learning_rate", "eval_iters"} <= fields
    assert module.__doc__.startswith(f"Stage {stage[:2]}:"), "each stage opens with its docstring"


def test_every_hyperparameter_is_a_flag_with_help(stage):
    module = load_stage(stage)
    parser = harness.cli.build_parser(stage, module.__doc__, module.Config, getattr(module, "PRESETS", None))
    actions = {a.dest: a for a in parser._actions}
    for name in module.Config.__dataclass_fields__:
        assert name in actions, f"--{name} is missing"
        assert actions[name].help, f"--{name} has no help (the comment after the field is its help)"


# -- the model -------------------------------------------------------------------------------------


def test_logits_shape_and_loss(stage):
    module = load_stage(stage)
    model = build(module)
    idx = torch.randint(VOCAB, (3, 8))
    logits, loss = model(idx)
    assert logits.shape == (3, 8, VOCAB)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)


def test_initial_loss_is_near_uniform(stage):
    module = load_stage(stage)
    model = build(module).eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(VOCAB, (256, 8), generator=gen)
    targets = torch.randint(VOCAB, (256, 8), generator=gen)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(VOCAB)) < 0.7, f"{loss.item():.3f} vs ln({VOCAB}) = {math.log(VOCAB):.3f}"


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_causality(stage):
    """In eval mode, the logits at positions <= t do not depend on the tokens after t."""
    module = load_stage(stage)
    model = build(module).eval()
    torch.manual_seed(1)
    idx = torch.randint(VOCAB, (2, 8))
    logits, _ = model(idx)
    for t in range(7):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(VOCAB, (2, 7 - t))
        changed_logits, _ = model(changed)
        torch.testing.assert_close(changed_logits[:, : t + 1], logits[:, : t + 1], msg=f"position {t} saw the future")


def test_tokens_communicate_from_stage_03_on(stage):
    """The converse of causality: from stage 03 on, earlier tokens do change later predictions."""
    module = load_stage(stage)
    model = build(module).eval()
    idx = torch.randint(VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % VOCAB
    moved = not torch.allclose(model(idx)[0][0, -1], model(changed)[0][0, -1])
    assert moved == (number(stage) >= 3), "stages 01-02 look at one token; from 03 on tokens communicate"


def test_generate_length_and_long_contexts(stage):
    module = load_stage(stage)
    model = build(module).eval()
    block = tiny_config(module).block_size
    idx = torch.zeros((2, block + 5), dtype=torch.long)  # longer than block_size
    out = model.generate(idx, max_new_tokens=7)
    assert out.shape == (2, block + 12)
    assert torch.equal(out[:, : block + 5], idx)  # the prompt is kept
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB


def test_generate_samples_from_the_softmax_at_temperature_and_top_k(stage):
    """Each stage's own generate: softmax of the logits / temperature, only the top_k, one draw."""
    module = load_stage(stage)
    model = build(module).eval()
    fixed = torch.full((VOCAB,), -1e4)  # all but the first four characters out of reach
    fixed[:4] = torch.tensor([0.0, 3.0, 1.0, 2.0])
    model.forward = lambda idx, targets=None: (fixed.expand(*idx.shape, VOCAB), None)  # (B, T, vocab)
    start = torch.zeros((4000, 1), dtype=torch.long)  # 4000 independent draws of the next token

    def draw(**kwargs):
        return model.generate(start, max_new_tokens=1, **kwargs)[:, -1]  # (4000,)

    torch.manual_seed(0)
    share = (draw() == 1).float().mean().item()
    assert share == pytest.approx(torch.softmax(fixed, -1)[1].item(), abs=0.03)  # 0.644: the softmax's odds
    assert set(draw(top_k=1).tolist()) == {1}
    assert set(draw(top_k=2).tolist()) == {1, 3}  # both, and only those two
    cold = draw(temperature=0.05)
    assert (cold == 1).float().mean() > 0.99  # a low temperature is nearly greedy


# -- stage-specific behaviour ----------------------------------------------------------------------


@pytest.mark.parametrize("stage", stages_from(3)[:1])
def test_three_forms_of_the_causal_average_agree(stage):
    module = load_stage(stage)
    x = torch.randn(4, 8, 5)  # (B, T, C)
    loop = module.average_loop(x)
    torch.testing.assert_close(module.average_matmul(x), loop)
    torch.testing.assert_close(module.average_softmax(x), loop)
    torch.testing.assert_close(loop[:, 0], x[:, 0])  # the first position averages only itself
    torch.testing.assert_close(loop[:, -1], x.mean(dim=1))  # the last averages everything
    model = build(module, n_embd=5)
    torch.testing.assert_close(model.average(x), loop)  # and the module the model uses computes the same


@pytest.mark.parametrize("stage", stages_from(3)[:1])
def test_stage_03_shows_its_weights_and_that_the_three_forms_agree_when_it_runs(stage, run_cli, capsys):
    module = load_stage(stage)
    module.show_the_three_forms()
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == [
        "  1.00 0.00 0.00 0.00",
        "  0.50 0.50 0.00 0.00",
        "  0.33 0.33 0.33 0.00",
        "  0.25 0.25 0.25 0.25",
    ]
    gap = float(re.search(r"agree to (\S+) on", out[5]).group(1))
    assert gap < 1e-6
    assert "show_the_three_forms()" in inspect.getsource(module.main)  # shown by every run, not only here


def residual_probe(module):
    """Feed a block with its attention and feed-forward outputs forced to zero; return (input, output)."""
    model = build(module).eval()
    block = model.blocks[0]
    zero = lambda mod, args, out: torch.zeros_like(out)  # noqa: E731
    block.sa.register_forward_hook(zero)
    block.ffwd.register_forward_hook(zero)
    x = torch.randn(2, 8, tiny_config(module).n_embd)
    return x, block(x)


@pytest.mark.parametrize("stage", stages_from(7)[:1])
def test_stage_07_blocks_have_no_residual_path(stage):
    x, out = residual_probe(load_stage(stage))
    assert torch.count_nonzero(out) == 0, "with its sublayers silenced, a block without residuals outputs zeros"


@pytest.mark.parametrize("stage", stages_from(8))
def test_blocks_from_stage_08_on_carry_a_residual_path(stage):
    x, out = residual_probe(load_stage(stage))
    torch.testing.assert_close(out, x)  # x + 0 + 0: the residual stream passes through untouched


@pytest.mark.parametrize("stage", stages_from(10))
def test_stage_10_at_the_lecture_configuration_has_10_788_929_parameters(stage):
    module = load_stage(stage)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = module.LanguageModel(VOCAB, module.Config())
    assert sum(p.numel() for p in model.parameters()) == 10_788_929


# -- the command line, end to end ------------------------------------------------------------------


def test_command_line_trains_saves_and_samples(stage, small_text_file, tmp_path, run_cli):
    module = load_stage(stage)
    ckpt = tmp_path / f"{stage}.pt"
    flags = tiny_flags(module, max_iters=20, eval_interval=10) + [
        "--data",
        str(small_text_file),
        "--checkpoint",
        str(ckpt),
    ]

    code, out, err = run_cli(module, flags)
    assert code == 0, err
    assert "step 0: train loss" in out and "step 19: train loss" in out
    saved = torch.load(ckpt, weights_only=True)
    assert saved["stage"] == stage and saved["step"] == 20
    assert [r["step"] for r in saved["history"]] == [0, 10, 19]
    assert ckpt.with_suffix(".sample.txt").read_text(encoding="utf-8").strip()
    assert harness.checkpoints.read_history(ckpt.with_suffix(".history.csv")) == saved["history"]

    code, out, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--prompt", "All:", "--num_tokens", "30"])
    assert code == 0, err
    assert out.split("parameters\n", 1)[1].startswith("All:")  # the sample continues the prompt
    assert "step 0" not in out  # sampling does not train


def test_help_lists_every_flag(stage, run_cli):
    module = load_stage(stage)
    code, out, _ = run_cli(module, ["--help"])
    assert code == 0
    for flag in [
        "--device",
        "--seed",
        "--data",
        "--sample",
        "--resume",
        "--prompt",
        "--num_tokens",
        "--temperature",
        "--top_k",
    ]:
        assert flag in out
    for name in module.Config.__dataclass_fields__:
        assert f"--{name}" in out


def test_stage_runs_as_a_script(tmp_path, small_text_file):
    """One real subprocess (the rest run in-process): `python stages/01_bigram.py` as a user types it."""
    import subprocess

    module = load_stage(STAGE_IDS[0])
    cmd = [
        sys.executable,
        str(tools.stages.STAGE_DIR / f"{STAGE_IDS[0]}.py"),
        *tiny_flags(module, max_iters=5, eval_interval=5),
    ]
    cmd += ["--data", str(small_text_file), "--checkpoint", str(tmp_path / "s.pt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 4: train loss" in done.stdout and (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("stage", stages_from(10))
def test_compile_and_bf16_train_the_stages_own_module_and_save_plain_float32_weights(
    stage, small_text_file, tmp_path, run_cli, monkeypatch
):
    """--compile compiles the stage's module in place, here with TorchDynamo's eager backend (inductor takes
    far longer than a test may on a CPU); --dtype bfloat16 runs each forward pass under autocast."""
    modes, autocast_in_forward = [], []
    compile_in_place = torch.nn.Module.compile

    def eager_compile(self, *args, mode=None, **kwargs):
        modes.append(mode)
        compile_in_place(self, backend="eager")

    def seen(module, args, output):
        if type(module).__name__ == "LanguageModel" and module.training:
            autocast_in_forward.append(torch.is_autocast_enabled("cpu"))

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    module = load_stage(stage)
    ckpt = tmp_path / "c.pt"
    flags = tiny_flags(module, n_layer=1) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)]
    with torch.nn.modules.module.register_module_forward_hook(seen):
        code, out, err = run_cli(module, flags + ["--dtype", "bfloat16", "--compile", "reduce-overhead"])
    assert code == 0, err
    assert modes == ["reduce-overhead"] and autocast_in_forward and all(autocast_in_forward)
    saved = torch.load(ckpt, weights_only=True)["model"]
    assert sorted(saved) == sorted(module.LanguageModel(VOCAB, tiny_config(module, n_layer=1)).state_dict())
    assert all(t.dtype == torch.float32 for t in saved.values())
    code, out, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--num_tokens", "10", "--device", "cpu"])
    assert code == 0, err
    assert modes == ["reduce-overhead"]  # sampling compiles nothing


def test_a_compiler_that_fails_is_one_line_that_says_to_train_without_compile(
    small_text_file, tmp_path, run_cli, monkeypatch
):
    failure = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})

    def failing_compile(self, *args, **kwargs):
        def forward(*a, **k):
            raise failure("backend='inductor' raised:\nCppCompileError: C++ compile error")

        self.forward = forward

    monkeypatch.setattr(torch.nn.Module, "compile", failing_compile)
    module = load_stage(STAGE_IDS[0])
    flags = tiny_flags(module) + ["--data", str(small_text_file), "--checkpoint", str(tmp_path / "c.pt"), "--compile"]
    code, _, err = run_cli(module, flags)
    one_line_error(code, err, "torch.compile failed (backend='inductor' raised:)", "train without --compile")


@pytest.mark.parametrize("stage", stages_from(10))
@pytest.mark.parametrize("preset", ["cpu", "video"])
def test_every_preset_of_stage_10_is_the_lectures_recipe_dropout_on_and_a_constant_rate(stage, preset):
    module = load_stage(stage)
    cfg = module.Config(**module.PRESETS[preset])
    assert 0.1 <= cfg.dropout <= 0.2  # the stage's one new idea is on wherever it runs
    assert not {"lr_decay", "warmup_iters"} & {f.name for f in dataclasses.fields(module.Config)}  # no schedule
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert "exercises.schedule" not in source and "learning_rate_at" not in source


@pytest.mark.parametrize("stage", stages_from(10))
def test_stage_10_trains_every_step_at_the_same_rate_and_says_so(
    stage, small_text_file, tmp_path, run_cli, monkeypatch
):
    """The lecture's loop: the rate the optimizer uses is --learning_rate at every step."""
    module = load_stage(stage)
    used = []  # the rate of each optimizer step, in order
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    flags = tiny_flags(module, max_iters=12, learning_rate=1e-2, dropout=0.1)
    code, out, err = run_cli(module, flags + ["--data", str(small_text_file), "--checkpoint", str(tmp_path / "c.pt")])
    assert code == 0, err
    assert used == [1e-2] * 12
    assert "dropout 0.1 in training, off in eval; constant rate 0.01" in out


@pytest.mark.parametrize("stage", [STAGE_IDS[0], *stages_from(10)])
def test_every_sample_is_drawn_in_eval_mode_after_training_and_with_sample(
    stage, small_text_file, tmp_path, run_cli, monkeypatch
):
    """Dropout off while sampling: the closing sample of a run and --sample both generate in eval mode."""
    module = load_stage(stage)
    modes = []  # model.training at each call of generate()
    generate = module.LanguageModel.generate

    def noting_generate(self, *args, **kwargs):
        modes.append(self.training)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(module.LanguageModel, "generate", noting_generate)
    ckpt = tmp_path / "c.pt"
    flags = tiny_flags(module, max_iters=4, dropout=0.2) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)]
    assert run_cli(module, flags)[0] == 0
    assert run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--num_tokens", "5", "--device", "cpu"])[0] == 0
    assert modes == [False, False]
