"""Plumbing shared by every stage: nothing here is a lesson of the lecture's model.

Text (download once, verify, read as UTF-8), the character tokenizer, the 90/10 split and batches,
the loss estimate, device choice, seeding, the command line, checkpoints, the progress bar, Ctrl-C,
and the loss history. Each stage keeps its hyperparameters, its model and its training loop in view
and calls into this module for the rest, the same way in all ten stages so that no diff shows it.

Every failure a user can cause raises `UserError`; `run_stage` turns it into one line on stderr and
a non-zero exit status instead of a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import dataclasses
import difflib
import hashlib
import http.client
import importlib.util
import io
import math
import os
import pickle
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, NoReturn

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
DATA_PATH = ROOT / "data" / "input.txt"
CHECKPOINT_DIR = ROOT / "checkpoints"
STAGE_DIR = ROOT / "stages"

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_BYTES = 1_115_394  # tiny Shakespeare: 65 distinct characters, 1,003,854 train / 111,540 val
DATA_MD5 = "6fb458f1232090904fb40fe944165e91"
DOWNLOAD_TIMEOUT_S = 30

CHECKPOINT_FORMAT = "nano-gpt-stages/1"
EVAL_CHUNK_TOKENS = 32_768  # the loss estimate feeds up to this many tokens per forward pass
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by Ctrl-C" (128 + SIGINT)


class UserError(Exception):
    """A failure the user can fix: `run_stage` prints its message as one line and exits non-zero."""

    exit_code = EXIT_USER_ERROR


class Interrupted(UserError):  # noqa: N818 (a stop the user asked for, not an error)
    """Ctrl-C: training stopped cleanly (its checkpoint is saved)."""

    exit_code = EXIT_INTERRUPTED


# ----------------------------------------------------------------------------------------------
# the text


def download(url: str, dest: Path, size: int = DATA_BYTES, md5: str = DATA_MD5) -> None:
    """Download url to dest, verify its size and md5, and only then move it into place.

    The bytes go to a temporary file beside dest and are renamed onto it at the end, so an
    interrupted or failed download never leaves a half-written dest behind.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write into {dest.parent} ({e.strerror or e}); put the text there yourself, or use --data PATH") from None
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        got = 0
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {dest.name}", leave=False, disable=None) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # timeouts, resets, cut-off replies
            reason = getattr(e, "reason", e)
            raise UserError(
                f"could not download the text from {url} ({reason}); "
                f"put a copy of tiny Shakespeare at {dest}, or train on your own file with --data PATH"
            ) from None
        if got != size or digest.hexdigest() != md5:
            raise UserError(
                f"the download from {url} is not the expected file ({got:,} bytes, md5 {digest.hexdigest()}; "
                f"expected {size:,} bytes, md5 {md5}); nothing was saved. Try again, or put the file at {dest}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_text(path: Path, flag: str = "--data") -> str:
    """Read a UTF-8 text file, with one clear error for each way it can be unusable."""
    named = f"{flag} {path}" if flag else str(path)  # as the user gave it, or the default path
    if path.is_dir():
        raise UserError(f"{named} is a directory; give the path of a UTF-8 text file")
    if not path.exists():
        raise UserError(f"{named}: no such file; give the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not raw:
        raise UserError(f"{path} is empty; give a UTF-8 text file with at least a few thousand characters")
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if raw.startswith(bom):  # UTF-32's marks first: UTF-32 LE's begins with UTF-16 LE's. PowerShell 5's `>` writes UTF-16
            raise UserError(f"{path} is {encoding} text; convert it to UTF-8 first (for example: iconv -f {encoding} -t UTF-8)")
    if b"\x00" in raw:
        raise UserError(f"{path} looks like a binary file (it contains NUL bytes); give a UTF-8 text file")
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # a UTF-8 byte-order mark (Notepad) is no character
    try:
        return raw[skip:].decode("utf-8")  # always UTF-8: the platform's default encoding varies (Windows)
    except UnicodeDecodeError as e:
        at = skip + e.start  # the offset in the file, mark included
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{raw[at]:02x} at offset {at}); convert it to UTF-8 first (for example with iconv)"
        ) from None


def load_text(data: Path | None) -> tuple[str, Path]:
    """The training text: --data when given, else data/input.txt, downloaded on first use."""
    if data is not None:
        return read_text(data), data
    if not DATA_PATH.exists():
        print(f"{DATA_PATH} not found: downloading tiny Shakespeare (1.1 MB) once")
        download(DATA_URL, DATA_PATH)
    return read_text(DATA_PATH, flag=""), DATA_PATH


# ----------------------------------------------------------------------------------------------
# the character tokenizer


class CharTokenizer:
    """Maps each distinct character of a text to an integer id and back."""

    def __init__(self, chars: str) -> None:
        self.chars = chars  # the vocabulary, sorted: id i is chars[i]
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        unknown = sorted(set(s) - self.stoi.keys())
        if unknown:
            names = ", ".join(repr(ch) for ch in unknown)
            raise UserError(
                f"{len(unknown)} character(s) not in the vocabulary: {names}; use only characters that occur in the training text"
            )
        return [self.stoi[ch] for ch in s]

    def encode_text(self, text: str) -> torch.Tensor:
        """encode() for a whole corpus: (N,) int64 ids through a numpy lookup table indexed by code
        point, without a Python int object per character (a million of them cost more than the lookup)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) one code point per character
        lut = np.full(max(map(ord, self.chars), default=0) + 1, -1, dtype=np.int64)
        lut[[ord(ch) for ch in self.chars]] = np.arange(self.vocab_size)
        if codes.size and (codes.max() >= lut.size or (lut[codes] < 0).any()):
            self.encode(text)  # raises the error that names the unknown characters
        return torch.from_numpy(lut[codes])

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def split_data(ids: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 90% of the text trains, the last 10% validates (a contiguous split, as in the lecture)."""
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of data: inputs x (B, T) and targets y (B, T), y shifted by one.

    y[b, t] is the character that follows x[b, : t + 1], so one window holds T training examples.
    """
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,) window starts
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1) indices of each window
    window = data[offsets]  # (B, T+1) gathered in one indexing operation, no Python loop
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


# ----------------------------------------------------------------------------------------------
# device, seeding, sampling


def choose_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; an explicit request for an absent device is an error."""
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    elif requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to this PyTorch; use --device cpu (or auto)")
    elif requested == "mps" and not has_mps:
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Draw one next token per row from logits (B, vocab) -> (B, 1).

    temperature < 1 sharpens the distribution, > 1 flattens it; top_k keeps only the k likeliest.
    The draw happens on the CPU: torch.multinomial on mps has returned out-of-range indices.
    """
    # subtracting the row's max first keeps (logits - max) / temperature finite for any temperature > 0:
    # a tiny temperature then means "greedy" instead of inf - inf = nan. A temperature too small for
    # float32 (below about 1e-45) would round to 0, and 0 / 0 = nan, so it stops at float32's tiny.
    temperature = max(temperature, torch.finfo(torch.float32).tiny)
    logits = logits.float()
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]  # (B, 1) the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, vocab)
    return torch.multinomial(probs.cpu(), num_samples=1).to(logits.device)  # (B, 1)


# ----------------------------------------------------------------------------------------------
# the command line


def _field_help(config_cls: type) -> dict[str, str]:
    """The comment after each field of a stage's Config is that flag's --help text."""
    import inspect

    try:
        source = inspect.getsource(config_cls)
    except (OSError, TypeError):  # no source to read (a frozen or generated class): flags without help
        return {}
    helps = {}
    for line in source.splitlines():
        m = re.match(r"\s*(\w+)\s*:\s*[\w\[\], |]+=\s*[^#]*#\s*(.*)$", line)
        if m:
            helps[m.group(1)] = m.group(2).replace("%", "%%")  # argparse formats help text with %
    return helps


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in --help unless it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == "" or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for unknown flags and one line per error."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            message = f"unknown argument(s): {self.suggest(m.group(1).split())}"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}; see --help for the allowed flags\n")

    def suggest(self, unknown: list[str]) -> str:
        """The unknown flags, each with the closest known one: "--max_iter (did you mean --max_iters?)"."""
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        hints = []
        for arg in [a for a in unknown if a.startswith("-")] or unknown:  # the flags, not their values
            close = difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6)
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        return ", ".join(hints)


def _checked(kind: type, ok: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse type: parse the text as kind, then require ok(value); each error names its rule."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n int' if kind is int else ' number'}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {requirement}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _positive(kind: type) -> Callable[[str], Any]:
    return _checked(kind, lambda v: v > 0 and math.isfinite(v), "must be greater than 0")  # nan fails v > 0


_seed = _checked(int, lambda v: 0 <= v < 2**32, f"must be from 0 to {2**32 - 1}")  # numpy's seeds are 32-bit
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "must be at least 0 and below 1")
_count = _checked(int, lambda v: v >= 0, "must be 0 or more")
MAY_BE_ZERO = {"warmup_iters"}  # counts where 0 means "none"; every other number must be positive


def build_parser(stage: str, doc: str | None, config_cls: type, presets: dict[str, dict] | None) -> Parser:
    summary = (doc or "").strip().split("\n\n")[0]
    parser = Parser(
        prog=f"python stages/{stage}.py",
        description=summary,
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # "--max_iter 3" must be an error, not silently --max_iters
    )
    # let "-1e-3" reach the type check ("must be greater than 0") rather than look like a flag
    parser._negative_number_matcher = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?$", re.IGNORECASE)
    hp = parser.add_argument_group("hyperparameters (the stage's Config)")
    helps = _field_help(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.type in (bool, "bool"):
            hp.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
            continue
        parse = _fraction if f.name == "dropout" else _count if f.name in MAY_BE_ZERO else _positive(type(f.default))
        hp.add_argument(f"--{f.name}", type=parse, default=f.default, metavar=type(f.default).__name__.upper(), help=helps.get(f.name))
    run = parser.add_argument_group("running")
    if presets:
        run.add_argument(
            "--preset",
            choices=["auto", *presets],
            default="auto",
            help="a named set of hyperparameters; auto picks video with cuda or mps, cpu otherwise; flags given explicitly "
            "still win. The defaults listed here are video's; "
            + "; ".join(f"{name} sets {', '.join(f'{k}={v}' for k, v in values.items())}" for name, values in presets.items() if values),
        )
    run.add_argument(
        "--device", choices=["auto", "cuda", "mps", "cpu"], default="auto", help="where to compute; auto tries cuda, then mps, then cpu"
    )
    run.add_argument("--seed", type=_seed, default=1337, metavar="INT", help="random seed, for reproducible runs (0 to 2**32 - 1)")
    run.add_argument("--data", type=Path, default=None, metavar="PATH", help="train on this UTF-8 text file instead of tiny Shakespeare")
    run.add_argument("--checkpoint", type=Path, default=None, metavar="PATH", help=f"checkpoint file (default: checkpoints/{stage}.pt)")
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model for training (pays off on a GPU; compiling costs more than it saves on a CPU)",
    )
    run.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: run the forward pass under autocast (fast on recent GPUs)",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--sample", action="store_true", help="load the checkpoint and only generate text")
    mode.add_argument("--resume", action="store_true", help="continue training from the checkpoint")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (default: start from a newline)")
    gen.add_argument("--num_tokens", type=_positive(int), default=500, metavar="INT", help="how many characters to generate")
    gen.add_argument("--temperature", type=_positive(float), default=1.0, metavar="FLOAT", help="below 1: safer text, above 1: wilder")
    gen.add_argument(
        "--top_k", type=_positive(int), default=None, metavar="INT", help="sample only among the k likeliest characters (default: all)"
    )
    return parser


def _explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags actually typed on the command line (not left at their defaults)."""
    by_option = {o: a.dest for a in parser._actions for o in a.option_strings}
    given = set()
    for arg in argv:
        name = arg.split("=")[0]
        if name in by_option:
            given.add(by_option[name])
        elif name.startswith("--no-") and "--" + name[5:] in by_option:
            given.add(by_option["--" + name[5:]])
    return given


def check_config(cfg: Any, origin: dict[str, str] | None = None) -> None:
    """Relations between hyperparameters that no single flag's type can check. origin says where a
    value the user did not type came from ("preset cpu", "the checkpoint"), so the message can say so."""
    origin = origin or {}

    def named(name: str) -> str:
        return f"{name} ({getattr(cfg, name)}{', from ' + origin[name] if name in origin else ''})"

    n_embd, n_head = getattr(cfg, "n_embd", None), getattr(cfg, "n_head", None)
    if n_embd is not None and n_head is not None and n_embd % n_head:
        raise UserError(f"{named('n_embd')} must be divisible by {named('n_head')}: each head gets n_embd // n_head channels")


# ----------------------------------------------------------------------------------------------
# checkpoints


def write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """write(f) into a temporary file beside path, flushed to disk, then renamed onto path: a crash
    or a kill mid-write leaves the previous file whole, never half of the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes files private (0600); these are ordinary files
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def save_checkpoint(path: Path, payload: dict) -> None:
    write_atomically(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, stage: str) -> dict:
    """Load and check a checkpoint with weights_only=True: tensors and plain data, never arbitrary code."""
    if path.is_dir():
        raise UserError(f"--checkpoint {path} is a directory; give the checkpoint file inside it")
    if not path.exists():
        custom = "" if path == CHECKPOINT_DIR / f"{stage}.pt" else f" --checkpoint {path}"
        raise UserError(f"no checkpoint at {path}: train first with `python stages/{stage}.py{custom}`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # the file is there but cannot be read: it may be fine, so never say "delete it"
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(
                f"{path} holds Python objects beyond tensors and plain data; refusing to unpickle "
                "an untrusted file. Delete it and train again"
            ) from None
        raise UserError(f"{path} is damaged or not a checkpoint ({_first_line(e)}); delete it and train again") from None
    except Exception as e:  # a damaged file can make the unpickler fail in any way (IndexError, EOFError, ...)
        raise UserError(f"{path} is damaged or not a checkpoint ({_first_line(e)}); delete it and train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project; delete it or pass another --checkpoint")
    if ckpt.get("stage") != stage:
        raise UserError(
            f"{path} was saved by stage {ckpt.get('stage')}, not {stage}; "
            f"run stages/{ckpt.get('stage')}.py with it, or give this stage its own --checkpoint"
        )
    return ckpt


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, without the `_orig_mod.` prefix that torch.compile adds to every key."""
    model = getattr(model, "_orig_mod", model)
    return {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# one run of a stage: what the stage's main() gets from start()


@dataclasses.dataclass
class Run:
    """Everything a stage's main() needs besides its model: config, device, data and the command line."""

    stage: str
    config: Any
    args: argparse.Namespace
    device: torch.device
    tokenizer: CharTokenizer
    checkpoint_path: Path
    checkpoint: dict | None  # the loaded checkpoint, with --sample or --resume
    train_data: torch.Tensor | None = None  # (N_train,) int64 token ids; None with --sample
    val_data: torch.Tensor | None = None  # (N_val,)
    train_gen: torch.Generator | None = None  # draws training batches; saved in checkpoints
    eval_gen: torch.Generator | None = None  # draws evaluation batches, apart so resuming stays exact

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def sample_only(self) -> bool:
        return bool(self.args.sample)

    def get_batch(
        self, split: str, batch_size: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (x, y) of the train or val split on the run's device, each (B, T)."""
        data = self.train_data if split == "train" else self.val_data
        cfg = self.config
        x, y = get_batch(data, batch_size or cfg.batch_size, cfg.block_size, generator or self.train_gen)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    @torch.no_grad()
    def estimate_loss(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss over eval_iters batches of each split, in eval mode (no dropout), without gradients.

        The eval_iters * batch_size sequences are fed in a few large chunks rather than eval_iters
        small batches: the same mean, far fewer Python round trips.
        """
        cfg = self.config
        total_seqs = cfg.eval_iters * cfg.batch_size
        chunk = max(cfg.batch_size, EVAL_CHUNK_TOKENS // cfg.block_size)
        model.eval()
        out = {}
        for split in ("train", "val"):
            loss_sum, done = 0.0, 0
            while done < total_seqs:
                n = min(chunk, total_seqs - done)
                x, y = self.get_batch(split, n, self.eval_gen)
                _, loss = model(x, y)
                loss_sum += loss.item() * n  # every sequence weighs the same, as in eval_iters equal batches
                done += n
            out[split] = loss_sum / total_seqs
        model.train()
        return out

    def accelerate(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train with: compiled and/or under bf16 autocast when asked, else model itself."""
        if not self.args.compile and self.args.dtype == "float32":
            return model
        return _Accelerated(model, self.args.compile, getattr(torch, self.args.dtype), self.device.type)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The prompt as a (1, T) tensor of ids; an empty prompt starts from a newline (or id 0)."""
        if not prompt:
            return torch.tensor([[self.tokenizer.stoi.get("\n", 0)]], device=self.device)
        return torch.tensor([self.tokenizer.encode(prompt)], device=self.device)

    def generate_text(self, model: torch.nn.Module, prompt: str | None = None, num_tokens: int | None = None) -> str:
        """The prompt and num_tokens sampled characters after it (the prompt is checked before sampling)."""
        args = self.args
        prompt = args.prompt if prompt is None else prompt
        idx = self.encode_prompt(prompt)  # (1, T)
        model.eval()
        out = model.generate(idx, num_tokens or args.num_tokens, temperature=args.temperature, top_k=args.top_k)
        model.train()
        text = self.tokenizer.decode(out[0].tolist())
        return text if prompt else text[1:]  # drop the newline that seeded an empty prompt


class _Accelerated(torch.nn.Module):
    """Calls a model under autocast and/or torch.compile. The Trainer keeps the plain model, so
    checkpoints never carry compile's `_orig_mod.` prefix and load anywhere, a CPU included."""

    def __init__(self, model: torch.nn.Module, compile: bool, dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.inner = torch.compile(model) if compile else model
        self.dtype, self.device_type = dtype, device_type

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.inner(idx, targets)


def stage_name(stage_file: str) -> str:
    return Path(stage_file).stem


def start(
    stage_file: str,
    config_cls: type,
    doc: str | None,
    argv: list[str] | None = None,
    presets: dict[str, dict] | None = None,
) -> Run:
    """Parse the command line, choose the device, seed, and load the data and/or the checkpoint.

    With --sample or --resume the hyperparameters come from the checkpoint, except flags typed on
    this command line; with --sample the vocabulary comes from the checkpoint and no text is read.
    """
    stage = stage_name(stage_file)
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(stage, doc, config_cls, presets)
    args = parser.parse_args(argv)
    given = _explicit_flags(parser, argv)
    device = choose_device(args.device)
    seed_everything(args.seed)

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    origin: dict[str, str] = {}  # where a value not typed on this command line came from, for error messages
    if presets and (args.sample or args.resume):  # with a checkpoint, its own hyperparameters apply
        if "preset" in given:
            print("--preset is ignored with --sample and --resume: the checkpoint's hyperparameters apply")
    elif presets:
        preset, why = args.preset, "asked for with --preset"
        if preset == "auto":
            preset = "video" if device.type in ("cuda", "mps") else "cpu"
            why = f"chosen for {device.type}; --preset {'cpu' if preset == 'video' else 'video'} forces the other"
        changed = {name: value for name, value in presets[preset].items() if name not in given}
        print(f"preset: {preset} ({why})")
        if changed:
            print("  it sets " + ", ".join(f"{name} {value}" for name, value in changed.items()))
        values.update(changed)
        origin.update({name: f"preset {preset}" for name in changed})
    checkpoint_path = args.checkpoint or CHECKPOINT_DIR / f"{stage}.pt"
    ckpt = None
    if args.sample or args.resume:
        ckpt = load_checkpoint(checkpoint_path, stage)
        for name in values:
            if name not in given and name in ckpt["config"]:
                values[name] = ckpt["config"][name]
                origin[name] = "the checkpoint"
    config = config_cls(**values)
    check_config(config, origin)
    print(f"device: {device}")

    if args.sample:
        tokenizer = CharTokenizer(ckpt["vocab"])
        check_sampling_flags(args, tokenizer)
        return Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt)

    text, source = load_text(args.data)
    tokenizer = CharTokenizer.from_text(text)
    if ckpt is not None and ckpt["vocab"] != tokenizer.chars:
        raise UserError(
            f"{checkpoint_path} was trained on a text with another vocabulary ({len(ckpt['vocab'])} characters, "
            f"here {tokenizer.vocab_size} in {source}); resume with the same --data, or train afresh without --resume"
        )
    check_sampling_flags(args, tokenizer)
    ids = tokenizer.encode_text(text)  # (N,) int64
    train_data, val_data = split_data(ids)
    if len(val_data) <= config.block_size:
        raise UserError(
            f"{source} is too short: its validation split (the last 10%) has {len(val_data)} characters, "
            f"and block_size {config.block_size} needs at least {config.block_size + 1}; "
            "use a longer text or a smaller --block_size"
        )
    print(f"data: {source} — {len(ids):,} characters, vocabulary {tokenizer.vocab_size}, {len(train_data):,} train / {len(val_data):,} val")
    check_writable(checkpoint_path)
    train_gen = torch.Generator().manual_seed(args.seed)
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    return Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt, train_data, val_data, train_gen, eval_gen)


def check_sampling_flags(args: argparse.Namespace, tokenizer: CharTokenizer) -> None:
    """Check --prompt and --top_k against the vocabulary before any training, not after it."""
    tokenizer.encode(args.prompt)  # names any character outside the vocabulary
    if args.top_k is not None and args.top_k > tokenizer.vocab_size:
        raise UserError(
            f"--top_k {args.top_k} is larger than the vocabulary ({tokenizer.vocab_size} characters); use 1 to {tokenizer.vocab_size}"
        )


def check_writable(path: Path) -> None:
    """Fail before training, not after it, when the checkpoint cannot be written."""
    if path.is_dir():
        raise UserError(f"--checkpoint {path} is a directory; give a file name such as {path / 'model.pt'}")
    check_writable_dir(path.parent, f"the checkpoint {path}", "--checkpoint")


def check_writable_dir(directory: Path, what: str, flag: str) -> None:
    """Create directory if needed and prove a file can be written in it; else one clear error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} ({e.strerror or e}); choose another place with {flag}") from None


# ----------------------------------------------------------------------------------------------
# training: progress, Ctrl-C, non-finite losses, checkpoints, history, the closing sample


class Trainer:
    """Drives the bookkeeping around a stage's visible training loop."""

    def __init__(self, run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.run, self.model, self.optimizer = run, model, optimizer
        self.step = 0  # optimizer steps completed
        self.history: list[dict[str, float]] = []  # one row per loss estimate
        self.elapsed = 0.0  # training seconds before this process (from the checkpoint)
        self.trained = False
        self._t0 = time.perf_counter()
        self._stop = False
        self._bar: tqdm | None = None
        self._saved_step: int | None = None  # the step of the checkpoint on disk, written by this run
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params:,} parameters")
        if run.checkpoint is not None:
            self._restore(run.checkpoint)

    def _restore(self, ckpt: dict) -> None:
        own = _state_dict(self.model)
        theirs = ckpt["model"]
        mismatched = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape] + [k for k in theirs if k not in own]
        if mismatched:
            cfg = {k: v for k, v in ckpt["config"].items() if k in ("n_embd", "n_head", "n_layer", "block_size")}
            raise UserError(
                f"{self.run.checkpoint_path} holds a model of another size ({cfg or 'other layers'}; first difference: "
                f"{mismatched[0]}); drop the size flags to use the checkpoint's, or train afresh"
            )
        getattr(self.model, "_orig_mod", self.model).load_state_dict(theirs)
        self.step = ckpt["step"]
        self.history = list(ckpt["history"])
        self.elapsed = ckpt["elapsed"]
        if self.run.args.resume:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            for group in self.optimizer.param_groups:  # the optimizer state brings the old rate back:
                group["lr"] = self.run.config.learning_rate  # --learning_rate (or the checkpoint's) wins
            self.run.train_gen.set_state(ckpt["rng"]["batches"])
            self.run.eval_gen.set_state(ckpt["rng"]["eval"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            cuda_states = ckpt["rng"].get("cuda", [])
            if torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
            print(f"resumed from {self.run.checkpoint_path} at step {self.step}")

    # -- the loop ---------------------------------------------------------------------------

    def steps(self) -> Iterator[int]:
        """Step numbers from the checkpoint's step (0 when fresh) to max_iters - 1; none with --sample.

        Ctrl-C is held until the current step ends, then the checkpoint is saved and the run stops.
        """
        max_iters = self.run.config.max_iters
        if self.run.sample_only:
            return
        if self.step >= max_iters:
            print(f"the checkpoint is already at step {self.step}; raise --max_iters to train further")
            return
        previous = signal.signal(signal.SIGINT, self._on_ctrl_c)
        self._bar = tqdm(total=max_iters, initial=self.step, desc=self.run.stage, unit="step", dynamic_ncols=True, disable=None)
        try:
            for step in range(self.step, max_iters):
                yield step  # the stage's loop body runs here: one optimizer step
                self.step = step + 1
                self.trained = True
                if self._stop:
                    self.save()
                    raise Interrupted(
                        f"interrupted at step {self.step}: saved {self.run.checkpoint_path}; continue with the same command plus --resume"
                    )
        finally:
            self._bar.close()
            signal.signal(signal.SIGINT, previous)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._stop:  # a second Ctrl-C: stop at once, the last saved checkpoint stays as it was
            raise KeyboardInterrupt
        self._stop = True
        tqdm.write("Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again quits without saving)")

    def record(self, loss: torch.Tensor) -> None:
        """After an optimizer step: show the loss; stop on nan or inf before a bad model is saved."""
        value = loss.item()
        if not math.isfinite(value):
            self._stop_non_finite(f"the training loss became {value} at step {self.step + 1}")
        if self._bar is not None:
            self._bar.update(1)
            if self._bar.n % 10 == 0:
                self._bar.set_postfix(loss=f"{value:.4f}", refresh=False)

    def _stop_non_finite(self, what: str) -> None:
        kept = f"{self.run.checkpoint_path} (step {self._saved_step}) is kept" if self._saved_step is not None else "nothing was saved"
        raise UserError(f"{what}; training stopped and {kept}. Lower --learning_rate and train again")

    def log(self, step: int, losses: dict[str, float]) -> None:
        """Print a loss estimate, add it to the history, and save a checkpoint."""
        if not all(math.isfinite(v) for v in losses.values()):
            self._stop_non_finite(f"the estimated loss became {losses['train']} (train), {losses['val']} (val) at step {step}")
        tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "elapsed_s": self.seconds()}
        self.history = [r for r in self.history if r["step"] != step] + [row]  # a resumed run re-evaluates its first step
        self.save()

    def seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    # -- files --------------------------------------------------------------------------------

    def save(self) -> None:
        run = self.run
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never overwrite a good file with nan
            self._stop_non_finite(f"the weights hold nan or inf at step {self.step}")
        payload = {
            "format": CHECKPOINT_FORMAT,
            "stage": run.stage,
            "config": dataclasses.asdict(run.config),
            "vocab": run.tokenizer.chars,
            "step": self.step,
            "model": _state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "elapsed": self.seconds(),
            "rng": {
                "batches": run.train_gen.get_state(),
                "eval": run.eval_gen.get_state(),
                "torch": torch.get_rng_state(),  # dropout's random numbers on the CPU ...
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # ... and on GPUs
            },
        }
        try:
            if self._saved_step is None and not run.args.resume and run.checkpoint_path.exists():
                self._keep_previous()
            save_checkpoint(run.checkpoint_path, payload)
            write_history(history_path(run.checkpoint_path), self.history)
        except OSError as e:  # disk full, permissions changed mid-run: write_atomically never leaves half a file
            raise UserError(
                f"could not save the checkpoint ({e.strerror or e}: {e.filename or run.checkpoint_path}); what is on disk "
                "is the last one written whole. Free some space or pass another --checkpoint"
            ) from None
        self._saved_step = self.step

    def _keep_previous(self) -> None:
        """A fresh run is about to replace a checkpoint from an earlier run: copy it (and its history) aside.

        A copy, not a move: until the new checkpoint is written whole, the old one stays where it was.
        """
        path = self.run.checkpoint_path
        prev = path.with_name(f"{path.stem}.prev{path.suffix}")
        shutil.copy2(path, prev)
        if history_path(path).exists():
            shutil.copy2(history_path(path), history_path(prev))
        tqdm.write(f"copied the earlier run's checkpoint to {prev} before replacing it (--resume continues a run instead)")

    def finish(self) -> str:
        """After training: save the final checkpoint, compare with the previous stage, print a sample."""
        run = self.run
        if self.trained:
            self.save()
            print(f"saved {run.checkpoint_path} (step {self.step}, {self.seconds():.1f} s of training)")
            self._compare_with_previous_stage()
        text = run.generate_text(self.model)
        print(text)
        if self.trained:
            sample = run.checkpoint_path.with_suffix(".sample.txt")
            try:
                sample.write_text(text + "\n", encoding="utf-8")
            except OSError as e:
                raise UserError(
                    f"could not write {sample} ({e.strerror or e}); the checkpoint is saved, and --sample prints more"
                ) from None
        return text

    def _compare_with_previous_stage(self) -> None:
        if not self.history:
            return
        previous = previous_stage(self.run.stage)
        if previous is None:
            return
        rows = read_history(history_path(self.run.checkpoint_path.parent / f"{previous}.pt"))
        if rows:
            print(f"val loss {self.history[-1]['val_loss']:.4f} here; {rows[-1]['val_loss']:.4f} at the end of {previous}'s last run")


def history_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_suffix(".history.csv")


HISTORY_FIELDS = ("step", "train_loss", "val_loss", "elapsed_s")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The loss history as CSV (step, train_loss, val_loss, elapsed_s), written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in HISTORY_FIELDS})  # str(float) round-trips exactly
    write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows write_history wrote; an absent or unreadable file reads as no rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{"step": int(r["step"]), **{k: float(r[k]) for k in HISTORY_FIELDS[1:]}} for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return []


def stage_files() -> list[Path]:
    return sorted(STAGE_DIR.glob("[0-9][0-9]_*.py"))


def load_stage(name: str) -> ModuleType:
    """Import stages/<name>.py by path (its name starts with a digit, so `import` cannot); name may
    also be just its number ("09"). Importing a stage reads no data and trains nothing."""
    path = STAGE_DIR / f"{name}.py"
    if not path.exists():
        path = next(iter(STAGE_DIR.glob(f"{name.zfill(2)}_*.py")), path)
    spec = importlib.util.spec_from_file_location(f"stage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: inspect and dataclasses look modules up here
    spec.loader.exec_module(module)
    return module


def previous_stage(stage: str) -> str | None:
    names = [p.stem for p in stage_files()]
    i = names.index(stage) if stage in names else 0
    return names[i - 1] if i > 0 else None


def machine_name() -> str:
    """A short description of this machine's processor, for result tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores"  # the cores this process may use, not all the host has


# ----------------------------------------------------------------------------------------------
# the entry point


def run_stage(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a stage's main(); a UserError or Ctrl-C becomes one line on stderr and an exit status."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        main(argv)
        return 0
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted: stopped without saving; any earlier checkpoint is unchanged", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:  # argparse: --help (0) or a command-line error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    finally:
        signal.signal(signal.SIGINT, handler)
