"""Every failure a user can cause: one clear line, a non-zero exit, no traceback, nothing lost."""

import importlib.util
import re
import signal
import socket
import sys

import pytest
import torch

import common
import harness
import harness.checkpoints
import harness.cli
import harness.errors
import harness.training
import tools.stages
from conftest import SMALL_TEXT, STAGE_IDS, load_stage, one_line_error, tiny_flags

ROOT = tools.stages.STAGE_DIR.parent
BIGRAM = STAGE_IDS[0]
MULTI_HEAD = next(s for s in STAGE_IDS if s.startswith("05"))


@pytest.fixture
def bigram():
    return load_stage(BIGRAM)


@pytest.fixture
def trained(bigram, small_text_file, tmp_path, run_cli):
    """A bigram checkpoint trained for 20 steps on the small text."""
    ckpt = tmp_path / "ck" / f"{BIGRAM}.pt"
    code, _, err = run_cli(bigram, tiny_flags(bigram) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)])
    assert code == 0, err
    return ckpt


def train_flags(module, data, ckpt, **kw):
    return tiny_flags(module, **kw) + ["--data", str(data), "--checkpoint", str(ckpt)]


# -- data ----------------------------------------------------------------------------------------


def test_missing_data_and_no_network(bigram, tmp_path, monkeypatch, run_cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(common, "DATA_PATH", tmp_path / "data" / "input.txt")
    monkeypatch.setattr(harness.cli, "DATA_URL", f"http://127.0.0.1:{port}/input.txt")
    code, _, err = run_cli(bigram, ["--max_iters", "5", "--checkpoint", str(tmp_path / "c.pt")])
    one_line_error(
        code,
        err,
        "could not download",
        f"put a copy of tiny Shakespeare at {tmp_path / 'data' / 'input.txt'}",
        "--data",
    )
    assert not (tmp_path / "data" / "input.txt").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"\xff\xfeh\x00i\x00", "holds NUL bytes: it is binary, or UTF-16 or UTF-32 text; give UTF-8"),
        (b"\xff\xfe\x00\x00h\x00\x00\x00", "holds NUL bytes: it is binary, or UTF-16 or UTF-32 text; give UTF-8"),
        ("Où est la café? ".encode("latin-1") * 100, "is not UTF-8 text (byte 0xf9 at offset 1)"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00" * 50, "binary"),
        (
            b"To be, or not to be: that is the question.\n",
            "too short: its validation split (the last 10%) has 5 characters",
        ),
    ],
    ids=["empty", "utf16", "utf32", "latin1", "binary", "too-short"],
)
def test_unusable_data_files(bigram, tmp_path, run_cli, content, message):
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    code, _, err = run_cli(bigram, ["--data", str(path), "--checkpoint", str(tmp_path / "c.pt")])
    one_line_error(code, err, message)
    assert not (tmp_path / "c.pt").exists()


def test_a_utf8_byte_order_mark_is_not_a_character(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + SMALL_TEXT.encode("utf-8"))  # what Notepad writes
    assert harness.cli.read_text(path) == SMALL_TEXT
    path.write_bytes(b"\xef\xbb\xbf" + "café".encode("latin-1"))  # a bad byte after the mark ...
    with pytest.raises(harness.UserError, match="byte 0xe9 at offset 6"):  # ... is named where it is in the file
        harness.cli.read_text(path)


def test_the_default_data_path_is_not_called_a_flag(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "DATA_PATH", tmp_path)  # a directory where the text should be
    with pytest.raises(harness.UserError, match=f"^{re.escape(str(tmp_path))} is a directory"):
        harness.cli.load_text(None)


def test_data_is_a_directory_or_missing(bigram, tmp_path, run_cli):
    code, _, err = run_cli(bigram, ["--data", str(tmp_path)])
    one_line_error(code, err, "is a directory")
    code, _, err = run_cli(bigram, ["--data", str(tmp_path / "nope.txt")])
    one_line_error(code, err, "nope.txt: no such file")


# -- the command line ------------------------------------------------------------------------------


def test_unknown_flag_suggests_the_closest(bigram, run_cli):
    code, _, err = run_cli(bigram, ["--max_iter", "3"])
    one_line_error(code, err, "unknown argument(s): --max_iter (did you mean --max_iters?)", "--help")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_iters", "abc"], "'abc' is not an int"),
        (["--learning_rate", "fast"], "'fast' is not a number"),
        (["--batch_size", "0"], "'0' must be greater than 0"),
        (["--block_size", "-8"], "'-8' must be greater than 0"),
        (["--learning_rate", "-1e-3"], "'-1e-3' must be 0 or more"),
        (["--learning_rate", "nan"], "'nan' is not a finite number"),
        (["--learning_rate", "inf"], "'inf' is not a finite number"),
        (["--max_iters", "0"], "'0' must be greater than 0"),
        (["--eval_iters", "0"], "'0' must be greater than 0"),
        (["--eval_interval", "-1"], "'-1' must be greater than 0"),
        (["--temperature", "0"], "'0' must be greater than 0"),
        (["--num_tokens", "-5"], "'-5' must be greater than 0"),
        (["--top_k", "0"], "'0' must be greater than 0"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--sample", "--resume"], "not allowed with argument"),
    ],
)
def test_bad_values(bigram, run_cli, flags, message):
    code, _, err = run_cli(bigram, flags)
    one_line_error(code, err, message)


def stage_with_a_new_field(tmp_path, monkeypatch, line: str):
    """Stage 01 as a learner may change it: one more field in its Config (line), nothing else."""
    source = (tools.stages.STAGE_DIR / f"{STAGE_IDS[0]}.py").read_text(encoding="utf-8")
    anchor = "    eval_iters: int = 200"
    assert anchor in source
    path = tmp_path / f"{STAGE_IDS[0]}.py"
    path.write_text(source.replace(anchor, f"{line}\n{anchor}"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("stage_with_a_new_field", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses looks the module up here; gone after the test
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "line, ok, refused",
    [
        (
            "    weight_decay: float = 0.1",
            ["0", "0.25"],
            {"-0.1": "must be 0 or more", "inf": "is not a finite number"},
        ),
        ("    grad_accum: int = 1", ["3"], {"0": "must be greater than 0"}),
        ("    beta: float = 1", ["0.5"], {"nan": "is not a finite number"}),  # the annotation decides, not the 1
    ],
    ids=["float", "int", "float with a whole default"],
)
def test_a_new_config_field_is_checked_by_its_type_alone(
    line, ok, refused, small_text_file, tmp_path, run_cli, monkeypatch
):
    """A float field takes 0 (weight decay 0 is no decay), an int is a count (at least 1): nothing in the harness
    names the field."""
    module = stage_with_a_new_field(tmp_path, monkeypatch, line)
    name = line.split(":")[0].strip()
    for value in ok:
        ckpt = tmp_path / f"ok-{value}.pt"
        flags = tiny_flags(module, max_iters=2) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)]
        code, _, err = run_cli(module, flags + [f"--{name}", value])
        assert code == 0, err
        assert torch.load(ckpt, weights_only=True)["config"][name] == float(value)
    for value, message in refused.items():
        code, _, err = run_cli(module, [f"--{name}", value])
        one_line_error(code, err, f"argument --{name}: '{value}' {message}")


def test_dropout_must_be_a_fraction(run_cli):
    code, _, err = run_cli(load_stage(STAGE_IDS[-1]), ["--dropout", "1.5"])
    one_line_error(code, err, "'1.5' must be at least 0 and below 1")


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range(bigram, run_cli, seed):
    code, _, err = run_cli(bigram, ["--seed", seed])
    one_line_error(code, err, f"'{seed}' must be from 0 to {2**32 - 1}")


def test_checkpoint_path_that_is_a_directory(bigram, small_text_file, tmp_path, run_cli):
    code, out, err = run_cli(bigram, train_flags(bigram, small_text_file, tmp_path))
    one_line_error(code, err, "is a directory; give a file name")
    assert "step 0" not in out
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(tmp_path)])
    one_line_error(code, err, "is a directory")


def test_n_embd_must_divide_into_heads(run_cli):
    module = load_stage(MULTI_HEAD)
    code, _, err = run_cli(module, ["--n_embd", "30", "--n_head", "4"])
    one_line_error(code, err, "n_embd (30) must be divisible by n_head (4)")


@pytest.mark.parametrize("flags", [["--n_head", "6"], ["--n_head=6"]])
def test_a_preset_value_in_an_error_says_where_it_came_from(run_cli, flags):
    code, out, err = run_cli(load_stage(STAGE_IDS[-1]), ["--device", "cpu", *flags])
    one_line_error(code, err, "n_embd (128, from preset cpu) must be divisible by n_head (6)")
    assert (
        "preset: cpu (chosen for cpu" in out and "it sets batch_size 32" in out and "n_head" not in out
    )  # typed flags win


def test_block_size_larger_than_the_validation_split(bigram, small_text_file, tmp_path, run_cli):
    code, _, err = run_cli(
        bigram, ["--data", str(small_text_file), "--block_size", "5000", "--checkpoint", str(tmp_path / "c.pt")]
    )
    one_line_error(code, err, "block_size 5000 needs 5001", "smaller --block_size")


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_absent_device(bigram, run_cli, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has cuda")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    code, _, err = run_cli(bigram, ["--device", device])
    one_line_error(code, err, f"--device {device}", "--device cpu")


# -- prompts and sampling ----------------------------------------------------------------------------


def test_prompt_outside_the_vocabulary_is_named(bigram, trained, run_cli):
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained), "--prompt", "Zoë"])
    one_line_error(code, err, "not in the vocabulary: 'Z', 'ë'")


def test_bad_prompt_is_caught_before_training(bigram, small_text_file, tmp_path, run_cli):
    ckpt = tmp_path / "c.pt"
    code, out, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt) + ["--prompt", "Zoë"])
    one_line_error(code, err, "'Z', 'ë'")
    assert "step 0" not in out and not ckpt.exists()


def test_empty_prompt_starts_from_a_newline(bigram, trained, run_cli):
    code, out, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained), "--prompt", "", "--num_tokens", "25"])
    assert code == 0, err
    text = out.split("parameters\n", 1)[1].removesuffix("\n")  # print() adds one newline
    assert len(text) == 25  # the 25 characters asked for, after the seed newline (which is not printed)


def test_prompt_longer_than_block_size_is_cropped(small_text_file, tmp_path, run_cli):
    """Stage 02's position table has block_size rows: without cropping, a long prompt would index past it."""
    module = load_stage(STAGE_IDS[1])
    ckpt = tmp_path / "c.pt"
    assert run_cli(module, train_flags(module, small_text_file, ckpt))[0] == 0
    prompt = "All:\nSpeak, speak.\n" * 3  # 57 characters, block_size is 8
    code, out, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--prompt", prompt, "--num_tokens", "10"])
    assert code == 0, err
    assert out.split("parameters\n", 1)[1].startswith(prompt)


def test_tiny_temperature_is_greedy_not_nan(bigram, trained, run_cli):
    greedy = run_cli(bigram, ["--sample", "--checkpoint", str(trained), "--top_k", "1", "--num_tokens", "30"])[1]
    for temperature in ("1e-45", "1e-300"):  # 1e-300 rounds to 0 in float32
        code, out, err = run_cli(
            bigram, ["--sample", "--checkpoint", str(trained), "--temperature", temperature, "--num_tokens", "30"]
        )
        assert code == 0, err
        assert out == greedy


def test_top_k_larger_than_the_vocabulary(bigram, trained, run_cli):
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained), "--top_k", "1000"])
    one_line_error(code, err, "--top_k 1000 is larger than the vocabulary")


def test_top_k_one_is_greedy_and_repeatable(bigram, trained, run_cli):
    outs = [
        run_cli(bigram, ["--sample", "--checkpoint", str(trained), "--top_k", "1", "--seed", str(s)])[1] for s in (1, 2)
    ]
    assert outs[0] == outs[1]


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["--sample", "--resume"])
def test_a_missing_checkpoint_on_the_command_line_is_one_line(bigram, small_text_file, tmp_path, run_cli, mode):
    code, _, err = run_cli(bigram, [mode, "--checkpoint", str(tmp_path / "none.pt"), "--data", str(small_text_file)])
    one_line_error(code, err, "no checkpoint at", f"python stages/{BIGRAM}.py")


def test_truncated_checkpoint(bigram, trained, run_cli):
    trained.write_bytes(trained.read_bytes()[:1000])
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained)])
    one_line_error(code, err, "is damaged or not a checkpoint", "train again")


def test_checkpoint_from_another_stage(trained, run_cli):
    other = load_stage(STAGE_IDS[1])
    code, _, err = run_cli(other, ["--sample", "--checkpoint", str(trained)])
    one_line_error(code, err, f"saved by stage {BIGRAM}, not {STAGE_IDS[1]}")


def test_resume_with_another_vocabulary(bigram, trained, tmp_path, run_cli):
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox jumps over the lazy dog\n" * 200, encoding="utf-8")
    code, _, err = run_cli(
        bigram, ["--resume", "--checkpoint", str(trained), "--data", str(other), "--max_iters", "40"]
    )
    one_line_error(code, err, f"has 5 characters ('b', 'g', 'j', 'q', 'x') that {trained} has no ids", "same --data")


def test_checkpoint_of_another_size(trained, tmp_path, small_text_file, run_cli):
    module = load_stage(STAGE_IDS[1])
    ckpt = tmp_path / "s2.pt"
    assert run_cli(module, train_flags(module, small_text_file, ckpt))[0] == 0
    code, _, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--n_embd", "24"])
    one_line_error(code, err, "holds a model of another size", "n_embd 16 there, 24 here")


def test_a_checkpoint_that_lacks_a_part_is_one_line(trained, bigram, run_cli):
    saved = torch.load(trained, weights_only=True)
    del saved["rng"], saved["history"]
    torch.save(saved, trained)
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained)])
    one_line_error(code, err, "lacks history, rng", "delete it and train again")


def test_random_bytes_are_not_a_checkpoint_rather_than_an_untrusted_one(trained, bigram, run_cli):
    trained.write_bytes(bytes(range(256)) * 40)
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained)])
    one_line_error(code, err, "is damaged or not a checkpoint")


def test_an_untrusted_pickle_on_the_command_line_is_one_line(bigram, trained, run_cli):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["extra"] = harness.Run  # any class: weights_only=True refuses to unpickle it
    torch.save(ckpt, trained)
    code, _, err = run_cli(bigram, ["--sample", "--checkpoint", str(trained)])
    one_line_error(code, err, "refusing to unpickle an untrusted file")


def test_unwritable_checkpoint_place_fails_before_training(bigram, small_text_file, tmp_path, run_cli):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, out, err = run_cli(bigram, train_flags(bigram, small_text_file, blocker / "c.pt"))
    one_line_error(code, err, "cannot write the checkpoint", "--checkpoint")
    assert "step 0" not in out


# -- interruptions and numerical faults ---------------------------------------------------------


@pytest.fixture
def terminal_signals():
    """Ctrl-C, SIGTERM and SIGHUP handled for this test as in a terminal, then as they were.

    A runner started as a background job inherits SIGINT ignored, one under nohup SIGHUP: training
    rightly leaves an ignored signal ignored, so a test that raises one must first undo that.
    """
    terminal = {signum: signal.SIG_DFL for signum in harness.errors.STOP_SIGNALS}
    terminal[signal.SIGINT] = signal.default_int_handler  # what Python starts with where SIGINT is not ignored
    previous = {signum: signal.signal(signum, handler) for signum, handler in terminal.items()}
    yield terminal
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def signal_at_step(module, monkeypatch, step: int, signum: int) -> None:
    """Send this process signum during the step-th training forward pass (1-based), as a user or a scheduler would.

    signal.raise_signal, not os.kill: kill() may hand the signal to another of torch's threads, so that
    this thread sees it a step or more later, by chance; raise_signal delivers it here before it returns.
    """
    forward = module.LanguageModel.forward
    calls = {"n": 0}

    def signalled(self, idx, targets=None):
        if self.training:
            calls["n"] += 1
            if calls["n"] == step:
                signal.raise_signal(signum)
        return forward(self, idx, targets)

    monkeypatch.setattr(module.LanguageModel, "forward", signalled)


@pytest.mark.parametrize(
    "signum, stopped",
    [
        (signal.SIGINT, "stopped by Ctrl-C"),
        (signal.SIGTERM, "stopped by SIGTERM"),
        (signal.SIGHUP, "stopped by SIGHUP"),
    ],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_a_stop_signal_ends_the_step_saves_where_the_run_was_and_resume_goes_on(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch, terminal_signals, signum, stopped
):
    """Ctrl-C, a scheduler's SIGTERM, a closed terminal's SIGHUP: the step ends, the checkpoint is saved there."""
    ckpt = tmp_path / "c.pt"
    signal_at_step(bigram, monkeypatch, step=7, signum=signum)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    assert signal.getsignal(signum) == terminal_signals[signum]  # the run's handler is gone with the run
    one_line_error(code, err, f"{stopped} at step 7: saved {ckpt}", "--resume", exit_code=128 + signum)  # 130, 143, 129
    assert torch.load(ckpt, weights_only=True)["step"] == 7  # not the step-0 checkpoint: nothing is lost
    monkeypatch.undo()
    code, out, err = run_cli(bigram, ["--resume", "--checkpoint", str(ckpt), "--data", str(small_text_file)])
    assert code == 0, err
    assert f"resumed from {ckpt} at step 7" in out and torch.load(ckpt, weights_only=True)["step"] == 30


def test_nohup_keeps_ignoring_sighup(bigram, small_text_file, tmp_path, run_cli, monkeypatch, terminal_signals):
    """Under `nohup` SIGHUP is ignored: training must not install a handler that would stop the run."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does; terminal_signals restores it afterwards
    signal_at_step(bigram, monkeypatch, step=5, signum=signal.SIGHUP)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, tmp_path / "c.pt", max_iters=12))
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # still ignored after the run
    assert code == 0, err  # trained to the end
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 12


class Killed(BaseException):
    """A process killed outright: nothing catches it, nothing is saved on the way out."""


def test_a_run_killed_between_estimates_then_resumed_is_the_uninterrupted_run(
    small_text_file, tmp_path, run_cli, monkeypatch
):
    """Weight for weight and loss for loss, with dropout on: every generator's state travels in the checkpoint."""
    module = load_stage(STAGE_IDS[-1])
    straight, killed = tmp_path / "straight.pt", tmp_path / "killed.pt"
    flags = dict(max_iters=30, eval_interval=5, dropout=0.1)
    assert run_cli(module, train_flags(module, small_text_file, straight, **flags))[0] == 0
    argv = train_flags(module, small_text_file, killed, **flags)
    record = harness.training.Trainer.count_step

    def record_then_die(self, loss):
        record(self, loss)
        if self.step == 17:
            raise Killed

    monkeypatch.setattr(harness.training.Trainer, "count_step", record_then_die)
    with pytest.raises(Killed):
        harness.run_main(module.main, argv)
    assert torch.load(killed, weights_only=True)["step"] == 15  # saved at the estimate of step 15
    monkeypatch.undo()
    code, _, err = run_cli(module, argv + ["--resume"])
    assert code == 0, err
    a, b = torch.load(straight, weights_only=True), torch.load(killed, weights_only=True)
    losses = [[(r["step"], r["train_loss"], r["val_loss"]) for r in ckpt["history"]] for ckpt in (a, b)]
    assert losses[0] == losses[1]  # one row a step, every loss the same to the last bit
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=0)


def nan_loss_at(module, monkeypatch, step: int) -> None:
    """Make the training loss nan at the step-th training forward pass (1-based); the weights stay finite."""
    forward = module.LanguageModel.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == step:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(module.LanguageModel, "forward", poisoned)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch
):
    ckpt = tmp_path / "c.pt"
    nan_loss_at(bigram, monkeypatch, step=15)  # the 15th training step: after the checkpoint saved at step 10
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "the training loss became nan at step 15", "(step 10) is kept", "Lower --learning_rate")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 10
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_losses_read_every_few_steps_still_stop_a_nan_run_before_it_is_saved(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch
):
    """As on a GPU: the loss is read every 10 steps, so the nan at step 15 is seen at step 20, never saved."""
    monkeypatch.setattr(harness.training, "read_interval", lambda device: 10)
    nan_loss_at(bigram, monkeypatch, step=15)
    ckpt = tmp_path / "c.pt"
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=40, eval_interval=25))
    one_line_error(code, err, "the training loss became nan at step 20", "(step 0) is kept")
    assert torch.load(ckpt, weights_only=True)["step"] == 0


def test_resume_uses_the_learning_rate_given(bigram, trained, small_text_file, run_cli):
    code, _, err = run_cli(
        bigram,
        [
            "--resume",
            "--checkpoint",
            str(trained),
            "--data",
            str(small_text_file),
            "--max_iters",
            "25",
            "--learning_rate",
            "1e-5",
        ],
    )
    assert code == 0, err
    saved = torch.load(trained, weights_only=True)
    assert saved["config"]["learning_rate"] == 1e-5
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [1e-5]


def poison_weights_at(module, monkeypatch, call: int, also=None):
    """Make the model's weights nan during its call-th training forward pass (its loss stays finite)."""
    forward = module.LanguageModel.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        out = forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                with torch.no_grad():
                    next(self.parameters()).fill_(float("nan"))
                if also:
                    also()
        return out

    monkeypatch.setattr(module.LanguageModel, "forward", poisoned)


def test_a_nan_estimate_stops_before_it_is_saved(bigram, small_text_file, tmp_path, run_cli, monkeypatch):
    ckpt = tmp_path / "c.pt"
    poison_weights_at(bigram, monkeypatch, call=20)  # the last step before the estimate at step 20
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "the estimated loss became nan", "at step 20", "(step 10) is kept")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 10 and all(torch.isfinite(t).all() for t in saved["model"].values())


def test_ctrl_c_never_saves_nan_weights(bigram, small_text_file, tmp_path, run_cli, monkeypatch, terminal_signals):
    ckpt = tmp_path / "c.pt"
    poison_weights_at(bigram, monkeypatch, call=15, also=lambda: signal.raise_signal(signal.SIGINT))
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "the weights hold nan or inf at step 15", "(step 10) is kept")
    assert torch.load(ckpt, weights_only=True)["step"] == 10


def test_second_ctrl_c_quits_without_saving(bigram, small_text_file, tmp_path, run_cli, monkeypatch, terminal_signals):
    """Ctrl-C twice within one step: stop at once, and leave the last checkpoint as it was."""
    ckpt = tmp_path / "c.pt"
    forward = bigram.LanguageModel.forward
    calls = {"n": 0}

    def pressed_twice(self, idx, targets=None):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                signal.raise_signal(signal.SIGINT)  # the first asks to stop after this step ...
                signal.raise_signal(signal.SIGINT)  # ... the second insists
        return forward(self, idx, targets)

    monkeypatch.setattr(bigram.LanguageModel, "forward", pressed_twice)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "stopped without saving", exit_code=harness.errors.EXIT_INTERRUPTED)
    assert torch.load(ckpt, weights_only=True)["step"] == 0  # the checkpoint saved at step 0, untouched


def test_a_second_sigterm_during_a_save_waits_for_the_checkpoint_and_its_history(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch, terminal_signals
):
    """Two SIGTERMs while the estimate at step 10 is saved, between the checkpoint and its history:
    both files are finished, they agree, and the exit status is SIGTERM's, not Ctrl-C's."""
    ckpt = tmp_path / "c.pt"
    write_history = harness.checkpoints.write_history
    calls = {"n": 0}

    def terminated_twice_while_writing(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:  # the save after the estimate at step 10 (the first was step 0's)
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
        write_history(path, rows)

    monkeypatch.setattr(harness.checkpoints, "write_history", terminated_twice_while_writing)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "SIGTERM: stopped once the checkpoint being written was whole", exit_code=143)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 10
    assert harness.checkpoints.read_history(harness.checkpoints.history_path(ckpt)) == saved["history"]
    assert [r["step"] for r in saved["history"]] == [0, 10]


def test_a_fresh_run_keeps_the_checkpoint_it_replaces(bigram, small_text_file, tmp_path, run_cli):
    ckpt = tmp_path / "c.pt"
    assert run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=12))[0] == 0
    code, out, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=5))
    assert code == 0, err
    assert f"copied the earlier run's checkpoint to {tmp_path / 'c.prev.pt'}" in out
    assert torch.load(tmp_path / "c.prev.pt", weights_only=True)["step"] == 12  # the first run, whole
    assert [r["step"] for r in harness.checkpoints.read_history(tmp_path / "c.prev.history.csv")] == [0, 10, 11]
    assert torch.load(ckpt, weights_only=True)["step"] == 5


def test_a_preset_with_a_checkpoint_is_ignored_out_loud(small_text_file, tmp_path, run_cli):
    module = load_stage(STAGE_IDS[-1])
    ckpt = tmp_path / "c.pt"
    assert run_cli(module, train_flags(module, small_text_file, ckpt, max_iters=2))[0] == 0
    code, out, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--preset", "video", "--num_tokens", "5"])
    assert code == 0, err  # video's sizes would not fit the checkpoint ("holds a model of another size")
    assert "--preset is ignored with --sample and --resume" in out


def test_a_checkpoint_that_cannot_be_written_mid_run_is_one_line(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch
):
    ckpt = tmp_path / "c.pt"
    real_save = harness.checkpoints.write_file
    calls = []

    def disk_full_on_the_second_save(path, payload):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        real_save(path, payload)

    monkeypatch.setattr(harness.checkpoints, "write_file", disk_full_on_the_second_save)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt))
    one_line_error(code, err, "could not save the checkpoint (No space left on device:", "the last one written whole")
    assert torch.load(ckpt, weights_only=True)["step"] == 0  # the first save, whole


def test_a_fresh_run_whose_first_save_fails_leaves_the_old_checkpoint_in_place(
    bigram, small_text_file, tmp_path, run_cli, monkeypatch
):
    ckpt = tmp_path / "c.pt"
    assert run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=12))[0] == 0

    def disk_full(path, payload):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(harness.checkpoints, "write_file", disk_full)
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=5))
    one_line_error(code, err, "could not save the checkpoint", "the last one written whole")
    assert torch.load(ckpt, weights_only=True)["step"] == 12  # still there, still whole: --resume finds it


# -- out of memory ----------------------------------------------------------------------------------

OUT_OF_MEMORY = {  # what torch raises when memory runs out, by device (stand-ins: nothing is allocated)
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB total)"),
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 144000000000 bytes"
    ),
    "mps": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.2 GB)"),
}


def memory_runs_out(module, monkeypatch, when):
    """The model's forward raises out of memory the first time when(model, idx) is true."""
    forward = module.LanguageModel.forward
    state = {"error": None}

    def exhausted(self, idx, targets=None):
        if state["error"] is not None and when(self, idx):
            error, state["error"] = state["error"], None
            raise error
        return forward(self, idx, targets)

    monkeypatch.setattr(module.LanguageModel, "forward", exhausted)
    return state


@pytest.mark.parametrize("device", list(OUT_OF_MEMORY))
@pytest.mark.parametrize(
    "when, kept",
    [
        (lambda model, idx: model.training, 0),  # the first step, after step 0's estimate
        (lambda model, idx: not model.training and idx.shape[0] > 1, None),  # the first estimate
        (lambda model, idx: idx.shape[0] == 1, 30),  # the closing sample: one row
    ],
    ids=["step", "estimate", "sampling"],
)
def test_out_of_memory_is_one_line_and_keeps_the_last_checkpoint(
    device, when, kept, bigram, small_text_file, tmp_path, run_cli, monkeypatch
):
    memory_runs_out(bigram, monkeypatch, when)["error"] = OUT_OF_MEMORY[device]()
    ckpt = tmp_path / "c.pt"
    code, _, err = run_cli(bigram, train_flags(bigram, small_text_file, ckpt, max_iters=30, eval_interval=10))
    one_line_error(code, err, "out of memory", "try a smaller --batch_size")
    assert (torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None) == kept


def test_an_error_that_is_not_out_of_memory_is_not_dressed_up_as_one(bigram, small_text_file, tmp_path, monkeypatch):
    state = memory_runs_out(bigram, monkeypatch, lambda model, idx: model.training)
    state["error"] = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x16 and 8x16)")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        harness.run_main(bigram.main, train_flags(bigram, small_text_file, tmp_path / "c.pt"))


def test_a_checkpoint_trained_with_a_hyperparameter_the_stage_no_longer_has_is_not_resumed(
    small_text_file, tmp_path, run_cli
):
    """A stage-10 checkpoint from before its schedule moved out (lr_decay, warmup_iters): one line on
    --resume, since the run would go on with another recipe; --sample still works."""
    module = load_stage(STAGE_IDS[-1])
    ckpt = tmp_path / "old.pt"
    assert run_cli(module, train_flags(module, small_text_file, ckpt))[0] == 0
    saved = torch.load(ckpt, weights_only=True)
    saved["config"] |= {"lr_decay": True, "warmup_iters": 100}
    torch.save(saved, ckpt)
    code, _, err = run_cli(module, ["--resume", "--checkpoint", str(ckpt), "--data", str(small_text_file)])
    one_line_error(code, err, "trained with lr_decay True, warmup_iters 100, which this stage no longer has")
    code, out, err = run_cli(module, ["--sample", "--checkpoint", str(ckpt), "--num_tokens", "5", "--device", "cpu"])
    assert code == 0, err
