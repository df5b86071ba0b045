"""common.py: text, tokenizer, split, batches, device, download, checkpoints, history."""

import dataclasses
import hashlib
import http.server
import re
import socket
import threading
import types
from pathlib import Path

import pytest
import torch

import common
from conftest import SMALL_TEXT

# -- tokenizer, split, batches ------------------------------------------------------------------


def test_tokenizer_round_trip():
    tok = common.CharTokenizer.from_text(SMALL_TEXT)
    assert tok.chars == "".join(sorted(set(SMALL_TEXT)))
    assert tok.decode(tok.encode(SMALL_TEXT[:500])) == SMALL_TEXT[:500]
    assert tok.encode("All") == [tok.stoi["A"], tok.stoi["l"], tok.stoi["l"]]


def test_unknown_characters_are_named():
    tok = common.CharTokenizer.from_text("abc")
    with pytest.raises(common.UserError, match=r"2 character\(s\) not in the vocabulary: 'x', 'é'"):
        tok.encode("abxéa")


def test_split_is_ninety_ten():
    ids = torch.arange(1000)
    train, val = common.split_data(ids)
    assert (len(train), len(val)) == (900, 100)
    assert torch.equal(torch.cat([train, val]), ids)  # contiguous, nothing lost


def test_split_sizes_of_tiny_shakespeare():
    if not common.DATA_PATH.exists():
        pytest.skip("data/input.txt is not here")
    text = common.read_text(common.DATA_PATH)
    tok = common.CharTokenizer.from_text(text)
    train, val = common.split_data(torch.tensor(tok.encode(text)))
    assert (tok.vocab_size, len(train), len(val)) == (65, 1_003_854, 111_540)


def test_batch_shapes_and_one_step_shift():
    data = torch.arange(100)
    gen = torch.Generator().manual_seed(0)
    x, y = common.get_batch(data, batch_size=5, block_size=7, generator=gen)
    assert x.shape == y.shape == (5, 7)
    assert torch.equal(y[:, :-1], x[:, 1:])  # y is x shifted by one ...
    assert torch.equal(y[:, -1], x[:, -1] + 1)  # ... and its last target is the next element of data


def test_batches_reach_the_last_window_and_never_past_it():
    data = torch.arange(10)  # block_size 7: the windows start at 0, 1 or 2 (the last: x = 2..8, y = 3..9)
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        x, y = common.get_batch(data, batch_size=4, block_size=7, generator=gen)
        starts |= set(x[:, 0].tolist())
        assert int(y.max()) <= 9
    assert starts == {0, 1, 2}


# -- device and sampling -------------------------------------------------------------------------


def test_device_override():
    assert common.choose_device("cpu") == torch.device("cpu")
    assert common.choose_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(common.UserError, match="--device cuda: no CUDA GPU"):
            common.choose_device("cuda")


def test_sample_next_respects_top_k_and_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(200, 1)  # (200, 4)
    torch.manual_seed(0)
    assert set(common.sample_next(logits, top_k=1).flatten().tolist()) == {1}
    assert set(common.sample_next(logits, top_k=2).flatten().tolist()) == {1, 3}  # both, and only those two
    cold = common.sample_next(logits, temperature=0.05)
    assert (cold == 1).float().mean() > 0.99  # a low temperature is nearly greedy


# -- the text: reading and downloading ----------------------------------------------------------


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
    with pytest.raises(common.UserError, match=message):
        common.read_text(path)


def test_data_path_that_is_a_directory_or_missing(tmp_path):
    with pytest.raises(common.UserError, match="is a directory"):
        common.read_text(tmp_path)
    with pytest.raises(common.UserError, match="no such file"):
        common.read_text(tmp_path / "missing.txt")


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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

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
        common.download(server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest())
    assert dest.read_bytes() == BODY
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    dest = tmp_path / "input.txt"
    with _Server(BODY) as server, pytest.raises(common.UserError, match="not the expected file.*nothing was saved"):
        common.download(server.url, dest, size=len(BODY), md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_download_cut_short_leaves_nothing(tmp_path):
    dest = tmp_path / "input.txt"
    with _Server(BODY[:100]) as server, pytest.raises(common.UserError, match="100 bytes"):
        common.download(server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest())
    assert list(tmp_path.iterdir()) == []


def test_download_that_breaks_off_mid_reply_is_one_error(tmp_path):
    dest = tmp_path / "input.txt"
    with _Server(BODY[:100], broken_chunk=True) as server, pytest.raises(common.UserError, match="could not download .*IncompleteRead"):
        common.download(server.url, dest, size=len(BODY), md5=hashlib.md5(BODY).hexdigest())  # http.client.IncompleteRead
    assert list(tmp_path.iterdir()) == []


def test_download_unreachable_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "input.txt"
    with pytest.raises(common.UserError, match=f"could not download.*put a copy of tiny Shakespeare at {re.escape(str(dest))}"):
        common.download(f"http://127.0.0.1:{port}/input.txt", dest)
    assert list(tmp_path.iterdir()) == []


def test_the_real_file_verifies_when_present(tmp_path):
    if not common.DATA_PATH.exists():
        pytest.skip("data/input.txt is not here")
    body = common.DATA_PATH.read_bytes()
    if hashlib.md5(body).hexdigest() != common.DATA_MD5:
        pytest.skip("data/input.txt is not the canonical tiny Shakespeare")
    with _Server(body) as server:
        common.download(server.url, tmp_path / "input.txt")  # the project's own size and md5
    assert (tmp_path / "input.txt").stat().st_size == common.DATA_BYTES


# -- checkpoints ---------------------------------------------------------------------------------


def _payload(stage="01_bigram", **extra):
    return {"format": common.CHECKPOINT_FORMAT, "stage": stage, "model": {"w": torch.randn(3, 4)}, **extra}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ck" / "01_bigram.pt"
    payload = _payload(step=7, vocab="abc", history=[{"step": 0, "val_loss": 4.1}])
    common.save_checkpoint(path, payload)
    loaded = common.load_checkpoint(path, "01_bigram")
    assert torch.equal(loaded["model"]["w"], payload["model"]["w"])
    assert (loaded["step"], loaded["vocab"], loaded["history"]) == (7, "abc", [{"step": 0, "val_loss": 4.1}])
    assert sorted(p.name for p in path.parent.iterdir()) == ["01_bigram.pt"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "01_bigram.pt"
    common.save_checkpoint(path, _payload(step=1))

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        common.save_checkpoint(path, _payload(step=2))
    monkeypatch.undo()
    assert common.load_checkpoint(path, "01_bigram")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["01_bigram.pt"]


def test_checkpoint_of_another_stage(tmp_path):
    path = tmp_path / "x.pt"
    common.save_checkpoint(path, _payload(stage="02_position_embedding"))
    with pytest.raises(common.UserError, match="saved by stage 02_position_embedding, not 01_bigram"):
        common.load_checkpoint(path, "01_bigram")


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
    common.save_checkpoint(path, _payload())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint at all")
    else:
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(common.UserError, match=message):
        common.load_checkpoint(path, "01_bigram")


class Untrusted:
    """An arbitrary Python object: weights_only=True must refuse to unpickle it."""


def test_untrusted_pickle_is_refused(tmp_path):
    path = tmp_path / "01_bigram.pt"
    torch.save(_payload(extra=Untrusted()), path)
    with pytest.raises(common.UserError, match="refusing to unpickle an untrusted file"):
        common.load_checkpoint(path, "01_bigram")


def test_missing_checkpoint(tmp_path):
    default = common.CHECKPOINT_DIR / "01_bigram.pt"  # in tmp_path too (conftest)
    with pytest.raises(common.UserError, match="no checkpoint at .*train first with `python stages/01_bigram.py`$"):
        common.load_checkpoint(default, "01_bigram")
    other = tmp_path / "mine.pt"  # the command that would write it names it
    with pytest.raises(common.UserError, match=f"train first with `python stages/01_bigram.py --checkpoint {re.escape(str(other))}`$"):
        common.load_checkpoint(other, "01_bigram")


def test_compiled_model_keys_are_saved_plain():
    model = torch.nn.Linear(2, 3)
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule looks like to state_dict
    assert sorted(common._state_dict(wrapper)) == ["bias", "weight"]


# -- history -------------------------------------------------------------------------------------


def test_history_round_trip(tmp_path):
    rows = [
        {"step": 0, "train_loss": 4.2, "val_loss": 4.3, "elapsed_s": 0.5},
        {"step": 10, "train_loss": 3.0, "val_loss": 3.1, "elapsed_s": 1.25},
    ]
    path = tmp_path / "s.history.csv"
    common.write_history(path, rows)
    assert path.read_text().splitlines()[0] == "step,train_loss,val_loss,elapsed_s"
    assert common.read_history(path) == rows
    assert common.read_history(tmp_path / "absent.csv") == []


def test_machine_name_names_the_cores():
    assert common.machine_name().endswith("cores")


def test_stage_files_are_numbered_in_order():
    names = [p.stem for p in common.stage_files()]
    assert names and names[0] == "01_bigram"
    assert [int(n[:2]) for n in names] == list(range(1, len(names) + 1))
    assert common.previous_stage(names[0]) is None
    assert all(common.previous_stage(b) == a for a, b in zip(names, names[1:], strict=False))
    assert isinstance(common.STAGE_DIR, Path)


def test_encode_text_matches_encode_and_names_unknown_characters():
    tok = common.CharTokenizer.from_text(SMALL_TEXT + "é€😀")  # code points past 255 and past the BMP
    text = SMALL_TEXT[:300] + "é€😀"
    assert tok.encode_text(text).tolist() == tok.encode(text)
    assert tok.encode_text(text).dtype == torch.int64
    assert tok.encode_text("").tolist() == []
    with pytest.raises(common.UserError, match=r"not in the vocabulary: 'Z', '𝄞'"):
        tok.encode_text("All Z𝄞")


@dataclasses.dataclass
class HelpConfig:
    warmup_iters: int = 0  # steps of warm-up (10% of the run is typical)
    decay: bool = False  # lower the rate as training goes on


def test_help_shows_zero_defaults_and_percent_signs():
    text = " ".join(common.build_parser("00_x", "A stage.", HelpConfig, None).format_help().split())
    assert "steps of warm-up (10% of the run is typical) (default: 0)" in text
    assert "--decay, --no-decay lower the rate as training goes on" in text


class FirstTokenLoss(torch.nn.Module):
    """A stand-in model: its 'loss' is the mean first token of the batch, and it keeps every batch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.seen.append(x)
        return None, x[:, 0].float().mean()


def test_the_chunked_loss_estimate_weighs_every_sequence_alike(monkeypatch):
    cfg = types.SimpleNamespace(eval_iters=4, batch_size=2, block_size=5)  # 8 sequences a split
    monkeypatch.setattr(common, "EVAL_CHUNK_TOKENS", 3 * cfg.block_size)  # chunks of 3, 3 and 2: unequal
    data = torch.arange(1000)
    run = common.Run("00_x", cfg, None, torch.device("cpu"), None, None, None, data, data, None, torch.Generator().manual_seed(0))
    model = FirstTokenLoss()
    losses = run.estimate_loss(model)
    seen = torch.cat(model.seen)
    assert [len(b) for b in model.seen] == [3, 3, 2, 3, 3, 2]  # both splits
    assert losses["train"] == pytest.approx(seen[:8, 0].float().mean().item())  # the mean over all 8, not of the 3 chunk means
    assert losses["val"] == pytest.approx(seen[8:, 0].float().mean().item())
    assert model.training  # back in training mode
