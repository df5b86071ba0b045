"""What every stage of the lecture shares: the text, its characters as numbers, batches, the loss.

Read it top to bottom, in the order the lecture meets each piece:

1. the text: tiny Shakespeare, one 1.1 MB file of plays;
2. the character tokenizer: every distinct character gets an id (65 of them);
3. the split: the first 90% of the ids train, the last 10% validate;
4. batches: random windows of the ids, each target the character after its input;
5. the loss estimate: a mean over many batches, less noisy than one batch's loss;
6. device choice (cuda, then mps, then cpu) and seeding;
7. the logits to sample from, at a temperature (used by every stage's generate).

Every function works from a Python prompt, e.g. in the project folder:

    >>> import common
    >>> text = common.read_text()
    >>> tok = common.CharTokenizer.from_text(text)
    >>> tok.decode(tok.encode("hii there"))
    'hii there'

What makes the stages sturdy programs (the command line, downloading the text and checking
it is UTF-8, checkpoints, the progress bar, Ctrl-C) is in the `harness` package, not here.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
DATA_PATH = ROOT / "data" / "input.txt"  # tiny Shakespeare; the stages download it on first use

# ----------------------------------------------------------------------------------------------
# 1. the text


def read_text(path: Path = DATA_PATH) -> str:
    """The whole training text as one string."""
    # always UTF-8: the platform's default encoding varies (Windows); "-sig" drops the
    # byte-order mark that Notepad puts at the start of a file, which is no character;
    # newline="": every character as it is in the file, "\r\n" line ends included
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read()


# ----------------------------------------------------------------------------------------------
# 2. the character tokenizer


class CharTokenizer:
    """Maps each distinct character of a text to an integer id, and back."""

    def __init__(self, chars: str) -> None:
        self.chars = chars  # the vocabulary, sorted: id i is chars[i]
        self.stoi = {ch: i for i, ch in enumerate(chars)}  # "string to integer"

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        """One id per character: encode("hi") is [46, 47] for tiny Shakespeare."""
        unknown = sorted(set(s) - self.stoi.keys())
        if unknown:  # a clear message instead of a bare KeyError
            names = ", ".join(repr(ch) for ch in unknown)
            raise ValueError(f"{len(unknown)} character(s) not in the vocabulary: {names}")
        return [self.stoi[ch] for ch in s]

    def decode(self, ids: list[int]) -> str:
        """The characters of the ids: decode([46, 47]) is "hi" for tiny Shakespeare."""
        return "".join(self.chars[i] for i in ids)

    def encode_text(self, text: str) -> torch.Tensor:
        """encode() for a whole corpus, as a tensor: (N,) int64 ids.

        The same ids as encode(), looked up in a numpy table indexed by code point: a million
        characters would otherwise make a million Python ints, slower than the lookup itself.
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        table = np.full(max(map(ord, self.chars), default=0) + 1, -1, dtype=np.int64)
        table[[ord(ch) for ch in self.chars]] = np.arange(self.vocab_size)
        if codes.size and (codes.max() >= table.size or (table[codes] < 0).any()):
            self.encode(text)  # raises the error that names the unknown characters
        return torch.from_numpy(table[codes])


# ----------------------------------------------------------------------------------------------
# 3. the split


def split_data(ids: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 90% of the ids train, the last 10% validate.

    A contiguous split, as in the lecture: the validation text is a part of the plays the model
    never saw, so its loss says how well the model generalises, not how well it memorises.
    """
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


# ----------------------------------------------------------------------------------------------
# 4. batches


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of data: inputs x (B, T) and targets y (B, T), where T = block_size.

    y is x shifted by one: y[b, t] is the character that follows x[b, : t + 1], so one window
    holds T training examples, with contexts of 1 to T characters. The batch is made on the
    device that data is on. generator, when given, draws the windows (default: torch's own).
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,) starts
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1) the indices of each window
    # on an NVIDIA GPU the indices travel without waiting for the GPU's queue of work to empty
    window = data[offsets.to(data.device, non_blocking=data.is_cuda)]  # (B, T+1) gathered at once
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()  # each (B, T)


# ----------------------------------------------------------------------------------------------
# 5. the loss estimate

EVAL_CHUNK_TOKENS = 32_768  # the loss estimate feeds up to this many tokens per forward pass


@torch.no_grad()  # no gradients: nothing here is trained, and it saves memory and time
def estimate_loss(
    model: torch.nn.Module,
    splits: dict[str, torch.Tensor],
    config,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """The mean loss over config.eval_iters batches of each split: {"train": 2.49, "val": 2.51}.

    One batch's loss is noisy; the mean over many says how the model really does. The model
    runs in eval mode (dropout off), and is put back into training mode at the end.
    """
    per_pass = batches_per_pass(config)  # batches that go through the model at once
    passes = math.ceil(config.eval_iters / per_pass)
    model.eval()
    out = {}
    for split, data in splits.items():
        total = 0.0
        for _ in range(passes):
            x, y = get_batch(data, per_pass * config.batch_size, config.block_size, generator)
            _, loss = model(x, y)  # the mean loss over per_pass batches
            total = total + loss  # a tensor: on a GPU it is read once, below, not every pass
        out[split] = total.item() / passes
    model.train()
    return out


def batches_per_pass(config) -> int:
    """How many of the estimate's batches to feed the model at once.

    Many at once make far fewer, larger steps than one batch at a time: as many as fit in
    EVAL_CHUNK_TOKENS tokens, evened out so that every pass has the same shape (a compiled model
    would otherwise compile again for a smaller last pass). So the passes hold eval_iters batches,
    or a few more when eval_iters does not split evenly: 199 makes two passes of 100.
    """
    fit = max(1, EVAL_CHUNK_TOKENS // (config.batch_size * config.block_size))
    passes = math.ceil(config.eval_iters / fit)
    return math.ceil(config.eval_iters / passes)


# ----------------------------------------------------------------------------------------------
# 6. device and seed


def choose_device() -> torch.device:
    """The fastest place to compute that this machine has: an NVIDIA GPU, an Apple GPU, the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """The same seed gives the same run: the same weights, batches, dropout and samples."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ----------------------------------------------------------------------------------------------
# 7. the logits to sample from


def adjust_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """The next-token logits (B, vocab) at a temperature, only the top_k kept: float32 on the CPU.

    Each stage's generate turns these into probabilities with softmax and draws from them with
    torch.multinomial. temperature < 1 sharpens the distribution, > 1 flattens it; top_k
    leaves only the k likeliest tokens. The draw happens on the CPU because torch.multinomial
    on Apple's mps backend has returned indices out of range.
    """
    logits = logits.float().cpu()
    # subtracting each row's max first makes the largest logit 0, and 0 / temperature stays 0 for
    # any temperature > 0: a tiny one sends the others to -inf, which is "greedy", never to
    # inf - inf = nan. The floor keeps a temperature that float32 would round to 0 (0 / 0 = nan).
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))  # softmax gives these 0
    return logits
