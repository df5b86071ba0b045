"""common.py, the lecture's shared parts: the text, the tokenizer, the split, batches, the loss
estimate, the device and the logits to sample from."""

import types

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
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary: 'x', 'é'"):
        tok.encode("abxéa")


def test_the_text_is_read_as_it_is_in_the_file(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst line\r\nsecond\rthird\n")  # Notepad's byte-order mark, CRLF and CR
    assert common.read_text(path) == "First line\r\nsecond\rthird\n"  # the mark dropped, every line end kept


def test_split_is_ninety_ten():
    ids = torch.arange(1000)
    train, val = common.split_data(ids)
    assert (len(train), len(val)) == (900, 100)
    assert torch.equal(torch.cat([train, val]), ids)  # contiguous, nothing lost


def test_split_sizes_of_tiny_shakespeare():
    if not common.DATA_PATH.exists():
        pytest.skip("data/input.txt is not here")
    text = common.read_text()
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


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_device_choice_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert common.choose_device() == torch.device(expected)


def test_adjust_logits_top_k_and_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])  # (1, 4)
    out = common.adjust_logits(logits, top_k=2)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert torch.isinf(out[0, [0, 2]]).all() and torch.isfinite(out[0, [1, 3]]).all()  # only the 2 likeliest
    torch.testing.assert_close(torch.softmax(common.adjust_logits(logits), -1), torch.softmax(logits, -1))
    half = common.adjust_logits(logits, temperature=0.5)
    torch.testing.assert_close(torch.softmax(half, -1), torch.softmax(logits * 2, -1))  # logits / T
    for tiny in (1e-45, 1e-300):  # 1e-300 rounds to 0 in float32
        probs = torch.softmax(common.adjust_logits(logits, temperature=tiny), -1)
        assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # greedy, not nan


def test_encode_text_matches_encode_and_names_unknown_characters():
    tok = common.CharTokenizer.from_text(SMALL_TEXT + "é€😀")  # code points past 255 and past the BMP
    text = SMALL_TEXT[:300] + "é€😀"
    assert tok.encode_text(text).tolist() == tok.encode(text)
    assert tok.encode_text(text).dtype == torch.int64
    assert tok.encode_text("").tolist() == []
    with pytest.raises(ValueError, match=r"not in the vocabulary: 'Z', '𝄞'"):
        tok.encode_text("All Z𝄞")


class FirstTokenLoss(torch.nn.Module):
    """A stand-in model: its 'loss' is the mean first token of the batch, and it keeps every batch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.modes: list[tuple[bool, bool]] = []  # (training, gradients on) at each call

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[None, torch.Tensor]:
        self.seen.append(x)
        self.modes.append((self.training, torch.is_grad_enabled()))
        return None, x[:, 0].float().mean()


def test_the_loss_estimate_feeds_equal_passes_and_weighs_every_sequence_alike(monkeypatch):
    cfg = types.SimpleNamespace(eval_iters=6, batch_size=2, block_size=5)  # 12 sequences a split
    monkeypatch.setattr(common, "EVAL_CHUNK_TOKENS", 8 * cfg.block_size)  # room for 8 sequences (4 batches) a pass
    data = torch.arange(1000)
    model = FirstTokenLoss()
    losses = common.estimate_loss(model, {"train": data, "val": data}, cfg, torch.Generator().manual_seed(0))
    seen = torch.cat(model.seen)
    # 4 batches would fit, but 4 + 2 would make a smaller last pass: two passes of 3 batches instead. Every pass
    # has the same shape, so a compiled model never compiles (or a CUDA graph records) again for a last one
    assert [len(b) for b in model.seen] == [6, 6, 6, 6]  # both splits
    assert losses["train"] == pytest.approx(seen[:12, 0].float().mean().item())  # the mean over all 12
    assert losses["val"] == pytest.approx(seen[12:, 0].float().mean().item())
    assert model.training  # back in training mode


@pytest.mark.parametrize(
    "batch_size, block_size, eval_iters, expected",
    [(32, 8, 200, 100), (32, 64, 20, 10), (64, 256, 200, 2), (2, 5, 7, 7), (64, 1024, 200, 1), (32, 8, 199, 100)],
)
def test_batches_per_pass_are_equal_within_the_token_budget(batch_size, block_size, eval_iters, expected):
    cfg = types.SimpleNamespace(batch_size=batch_size, block_size=block_size, eval_iters=eval_iters)
    per_pass = common.batches_per_pass(cfg)
    passes = -(-eval_iters // per_pass)
    assert per_pass == expected
    assert eval_iters <= passes * per_pass < eval_iters + passes  # eval_iters batches, or fewer than a pass more
    assert per_pass == 1 or per_pass * batch_size * block_size <= common.EVAL_CHUNK_TOKENS


def test_the_loss_estimate_reads_the_split_it_names():
    """Each split made of its own token: the estimate under each name is that split's, not another's."""
    cfg = types.SimpleNamespace(eval_iters=2, batch_size=2, block_size=5)
    splits = {"train": torch.full((100,), 3), "val": torch.full((100,), 7)}
    losses = common.estimate_loss(FirstTokenLoss(), splits, cfg, torch.Generator().manual_seed(0))
    assert losses == {"train": 3.0, "val": 7.0}


def test_the_loss_estimate_runs_the_model_in_eval_mode_without_gradients():
    """Dropout off, so the estimate measures the model itself; no graph kept, so it costs no memory."""
    cfg = types.SimpleNamespace(eval_iters=2, batch_size=2, block_size=5)
    model = FirstTokenLoss()
    common.estimate_loss(model, {"train": torch.arange(100), "val": torch.arange(100)}, cfg)
    assert model.modes and set(model.modes) == {(False, False)}, f"(training, gradients on) at each call: {model.modes}"
