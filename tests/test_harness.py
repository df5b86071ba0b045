"""The harness: the device flag, checking and downloading the text, checkpoint files, the loss
history, stage files, --help."""

import dataclasses
import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest
import torch

import common
import exercises.schedule
import harness
import harness.checkpoints
import harness.cli
import harness.training
import tools.machine
import tools.stages
from conftest import SMALL_TEXT

# -- the device ---------------------------------------------------------------------------------


def test_device_override():
    assert harness.cli.pick_device("cpu") == torch.device("cpu")
    assert harness.cli.pick_device("auto") == common.choose_device()
    if not torch.cuda.is_available():
        with pytest.raises(harness.UserError, match="--device cuda: no CUDA GPU"):
            harness.cli.pick_device("cuda")


# -- the text: checking and downloading ----------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"caf\xe9 au lait", "is not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "binary"),
    ],
)
def test_unusable_text_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(harness.UserError, match=message):
        harness.cli.read_text(path)


def test_data_path_that_is_a_directory_or_missing(tmp_path):
    with pytest.raises(harness.UserError, match="is a directory"):
        harness.cli.read_text(tmp_path)
    with pytest.raises(harness.UserError, match="no such file"):
        harness.cli.read_text(tmp_path / "missing.txt")


class _Server:
    """A one-file HTTP server on 127.0.0.1, started and stopped by the test."""

    def __init__(self, body: bytes, broken_chunk: bool = False) -> None:
        body_ = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                self.send_response(200)
                if broken_chunk:  # one chunk of a chunked reply, then the connection closes mid-reply
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(f"{len(body_) * 2:x}\r\n".encode() + body_)
                    return
                self.send_header("Content-Length", str(len(body_)))
                self.end_headers()
                self.wfile.write(body_)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/input.txt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


BODY = SMALL_TEXT.encode()


def test_download_saves_a_verified_file(tmp_path):
    dest = tmp_path / "data" / "input.txt"
    with _Server(BODY) as server:
        harness.cli.download(server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest())
    assert dest.read_bytes() == BODY
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    dest = tmp_path / "input.txt"
    with _Server(BODY) as server, pytest.raises(harness.UserError, match="not the expected file.*nothing was saved"):
        harness.cli.download(server.url, dest, size=len(BODY), md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_download_cut_short_leaves_nothing(tmp_path):
    dest = tmp_path / "input.txt"
    with _Server(BODY[:100]) as server, pytest.raises(harness.UserError, match="100 bytes"):
        harness.cli.download(server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest())
    assert list(tmp_path.iterdir()) == []


def test_download_that_breaks_off_mid_reply_is_one_error(tmp_path):
    dest = tmp_path / "input.txt"
    with (
        _Server(BODY[:100], broken_chunk=True) as server,
        pytest.raises(harness.UserError, match="could not download .*IncompleteRead"),
    ):
        harness.cli.download(
            server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest()
        )  # http.client.IncompleteRead
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "input.txt"
    with pytest.raises(
        harness.UserError, match=f"could not download.*put a copy of tiny Shakespeare at {re.escape(str(dest))}"
    ):
        harness.cli.download(f"http://127.0.0.1:{port}/input.txt", dest)
    assert list(tmp_path.iterdir()) == []


def test_the_real_file_verifies_when_present(tmp_path):
    if not common.DATA_PATH.exists():
        pytest.skip("data/input.txt is not here")
    body = common.DATA_PATH.read_bytes()
    if hashlib.md5(body).hexdigest() != harness.cli.DATA_MD5:
        pytest.skip("data/input.txt is not the canonical tiny Shakespeare")
    with _Server(body) as server:
        harness.cli.download(server.url, tmp_path / "input.txt")  # the project's own size and md5
    assert (tmp_path / "input.txt").stat().st_size == harness.cli.DATA_BYTES


# -- checkpoints ---------------------------------------------------------------------------------


def _payload(stage="01_bigram", **extra):
    return {"format": harness.checkpoints.CHECKPOINT_FORMAT, "stage": stage, "model": {"w": torch.randn(3, 4)}, **extra}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ck" / "01_bigram.pt"
    payload = _payload(step=7, vocab="abc", history=[{"step": 0, "val_loss": 4.1}])
    harness.checkpoints.write_file(path, payload)
    loaded = harness.checkpoints.read_file(path, "01_bigram")
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])
    assert (loaded["step"], loaded["vocab"], loaded["history"]) == (7, "abc", [{"step": 0, "val_loss": 4.1}])
    assert sorted(p.name for p in path.parent.iterdir()) == ["01_bigram.pt"]


def test_a_checkpoint_file_as_written_before_loads_as_a_checkpoint(tmp_path):
    """The file format is a plain dict with these keys, as every checkpoint written so far has them."""
    path = tmp_path / "01_bigram.pt"
    on_disk = {
        "format": "nano-gpt-stages/1",
        "stage": "01_bigram",
        "config": {"batch_size": 4, "block_size": 8},
        "vocab": "abc",
        "step": 7,
        "model": {"w": torch.randn(3, 4)},
        "optimizer": {"state": {}, "param_groups": []},
        "history": [{"step": 0, "train_loss": 4.2, "val_loss": 4.1, "elapsed_s": 0.5}],
        "elapsed": 1.5,
        "rng": {"batches": torch.Generator().get_state(), "eval": torch.Generator().get_state()},
    }
    torch.save(on_disk, path)
    ckpt = harness.checkpoints.load(path, "01_bigram")
    assert (ckpt.stage, ckpt.config, ckpt.vocab, ckpt.step) == ("01_bigram", on_disk["config"], "abc", 7)
    assert (ckpt.history, ckpt.elapsed) == (on_disk["history"], 1.5)
    assert torch.equal(ckpt.model["w"], on_disk["model"]["w"])
    harness.checkpoints.write_file(path, ckpt.to_file())  # and it is written back as it was read
    again = torch.load(path, weights_only=True)
    assert sorted(again) == sorted(on_disk) and again["step"] == 7


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "01_bigram.pt"
    harness.checkpoints.write_file(path, _payload(step=1))

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        harness.checkpoints.write_file(path, _payload(step=2))
    monkeypatch.undo()
    assert harness.checkpoints.read_file(path, "01_bigram")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["01_bigram.pt"]


def test_checkpoint_of_another_stage(tmp_path):
    path = tmp_path / "x.pt"
    harness.checkpoints.write_file(path, _payload(stage="02_position_embedding"))
    with pytest.raises(harness.UserError, match="saved by stage 02_position_embedding, not 01_bigram"):
        harness.checkpoints.read_file(path, "01_bigram")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "is damaged or not a checkpoint"),
        ("garbage", "is damaged or not a checkpoint"),
        ("not_a_checkpoint", "is not a checkpoint of this project"),
    ],
)
def test_damaged_checkpoint(tmp_path, damage, message):
    path = tmp_path / "01_bigram.pt"
    harness.checkpoints.write_file(path, _payload())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint at all")
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(harness.UserError, match=message):
        harness.checkpoints.read_file(path, "01_bigram")


class Untrusted:
    """An arbitrary Python object: weights_only=True must refuse to unpickle it."""


def test_read_file_refuses_an_untrusted_pickle(tmp_path):
    path = tmp_path / "01_bigram.pt"
    torch.save(_payload(extra=Untrusted()), path)
    with pytest.raises(harness.UserError, match="refusing to unpickle an untrusted file"):
        harness.checkpoints.read_file(path, "01_bigram")


def test_read_file_names_the_command_that_writes_a_missing_checkpoint(tmp_path):
    default = harness.checkpoints.CHECKPOINT_DIR / "01_bigram.pt"  # in tmp_path too (conftest)
    with pytest.raises(harness.UserError, match="no checkpoint at .*train first with `python stages/01_bigram.py`$"):
        harness.checkpoints.read_file(default, "01_bigram")
    other = tmp_path / "mine.pt"  # the command that would write it names it
    with pytest.raises(
        harness.UserError, match=f"train first with `python stages/01_bigram.py --checkpoint {re.escape(str(other))}`$"
    ):
        harness.checkpoints.read_file(other, "01_bigram")


# -- history -------------------------------------------------------------------------------------


def test_history_round_trip(tmp_path):
    rows = [
        {"step": 0, "train_loss": 4.2, "val_loss": 4.3, "elapsed_s": 0.5},
        {"step": 10, "train_loss": 3.0, "val_loss": 3.1, "elapsed_s": 1.25},
    ]
    path = tmp_path / "s.history.csv"
    harness.checkpoints.write_history(path, rows)
    assert path.read_text().splitlines()[0] == "step,train_loss,val_loss,elapsed_s"
    assert harness.checkpoints.read_history(path) == rows
    assert harness.checkpoints.read_history(tmp_path / "absent.csv") == []


def test_machine_name_names_the_cores():
    assert tools.machine.machine_name().endswith("cores")


def test_stage_files_are_numbered_in_order():
    names = [p.stem for p in tools.stages.stage_files()]
    assert names and names[0] == "01_bigram"
    assert [int(n[:2]) for n in names] == list(range(1, len(names) + 1))
    assert tools.stages.previous_stage(names[0]) is None
    assert all(tools.stages.previous_stage(b) == a for a, b in zip(names, names[1:], strict=False))
    assert isinstance(tools.stages.STAGE_DIR, Path)


@dataclasses.dataclass
class HelpConfig:
    warmup_iters: int = 0  # steps of warm-up (10% of the run is typical)
    decay: bool = False  # lower the rate as training goes on


def test_help_shows_zero_defaults_and_percent_signs():
    text = " ".join(harness.cli.build_parser("00_x", "A stage.", HelpConfig, None).format_help().split())
    assert "steps of warm-up (10% of the run is typical) (default: 0)" in text
    assert "--decay, --no-decay lower the rate as training goes on" in text


# -- is the loss normal? ----------------------------------------------------------------------------


REF_09 = harness.training.recorded()["09_layer_norm", None]
REF_10 = harness.training.recorded()["10_gpt", "cpu"]
REF_05 = harness.training.recorded()["05_multi_head_attention", None]


@pytest.mark.parametrize(
    "stage, preset, defaults, val, said",
    [
        (
            "09_layer_norm",
            None,
            True,
            REF_09 + 0.01,
            f"val loss {REF_09 + 0.01:.4f} is as expected: {REF_09:.4f} at 09_layer_norm's defaults",
        ),
        (
            "10_gpt",
            "cpu",
            True,
            REF_10 + 0.5,
            f"is 0.500 above the {REF_10:.4f} measured at 10_gpt's defaults (preset cpu)",
        ),
        ("10_gpt", "cpu", True, REF_10 - 0.2, f"below the {REF_10:.4f} measured"),
        (
            "05_multi_head_attention",
            None,
            False,
            2.30,
            f"no reference for these settings: this project measured {REF_05:.4f}",
        ),
        ("10_gpt", "video", True, 1.49, "no reference for 10_gpt's defaults (preset video): this project has not"),
    ],
    ids=["within the noise", "above", "below", "other settings", "not measured"],
)
def test_the_closing_verdict_on_the_val_loss(stage, preset, defaults, val, said):
    assert said in harness.training.judge(stage, preset, defaults, val)


def test_what_a_loss_far_off_usually_means_is_said():
    assert "learned only which character follows which" in harness.training.judge("10_gpt", "cpu", True, 2.49)
    assert "sees the characters it must predict" in harness.training.judge("09_layer_norm", None, True, 1.5)
    assert harness.training.judge("ex4_gelu", None, True, 1.5) is None  # not a stage: nothing to say


def test_a_run_is_at_its_defaults_only_with_every_training_setting_and_the_text_unchanged():
    stage = tools.stages.load_stage("10")
    presets = stage.PRESETS
    cpu = stage.Config(**presets["cpu"])
    assert harness.cli.at_defaults(cpu, stage.Config, presets, "cpu", None)
    assert harness.cli.at_defaults(stage.Config(), stage.Config, presets, "video", None)
    assert not harness.cli.at_defaults(cpu, stage.Config, presets, "video", None)
    changed = dataclasses.replace(cpu, max_iters=100)
    assert not harness.cli.at_defaults(changed, stage.Config, presets, "cpu", None)
    assert not harness.cli.at_defaults(cpu, stage.Config, presets, "cpu", Path("mine.txt"))


# -- the learning-rate schedule of exercise 4's worked solution and the exercises' programs ----------


@dataclasses.dataclass
class Scheduled(exercises.schedule.Schedule):
    max_iters: int = 1000
    learning_rate: float = 3e-4


def test_the_schedule_is_constant_or_warms_up_then_decays_to_a_tenth():
    rate_at = exercises.schedule.learning_rate_at
    assert {rate_at(s, Scheduled()) for s in (0, 50, 999)} == {3e-4}  # without lr_decay: the lecture's loop
    cfg = Scheduled(max_iters=1000, learning_rate=3e-3, lr_decay=True, warmup_iters=100)
    rates = [rate_at(s, cfg) for s in range(cfg.max_iters + 1)]
    assert rates[0] == pytest.approx(3e-5) and rates[99] == pytest.approx(3e-3)  # linear warm-up over 100 steps
    assert all(a < b for a, b in zip(rates[:99], rates[1:100], strict=True))
    assert all(a >= b for a, b in zip(rates[99:], rates[100:], strict=False))  # then only down ...
    assert rates[550] == pytest.approx(3e-3 * 0.55)  # ... half-way down the cosine at the midpoint ...
    assert rates[1000] == pytest.approx(3e-4)  # ... to a tenth at max_iters
    assert rate_at(5, Scheduled(max_iters=3, lr_decay=True, warmup_iters=3)) > 0  # a run shorter than its warm-up
    assert rate_at(0, Scheduled(lr_decay=True, warmup_iters=0, max_iters=10)) == pytest.approx(3e-4)  # no warm-up


def test_help_lists_a_field_that_has_no_comment():
    """A Config whose source cannot be read (made at run time) has flags without help, and --help works."""
    config = dataclasses.make_dataclass("Config", [("steps", int, dataclasses.field(default=3))])
    text = harness.cli.build_parser("00_x", "A stage.", config, None).format_help()
    assert "--steps INT" in text
