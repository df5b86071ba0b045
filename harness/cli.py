"""The command line, and what a run starts from: start() parses the flags, picks the device, seeds,
and loads the text and any checkpoint into a Run, all a stage's main() needs besides its model.

Each field of a stage's Config is a flag: a bool a switch, an int a count or a size (1 or more), a
float a rate or a weight (0 or more). Metadata moves the bounds ({"min": 0}, {"below": 1}); the
comment after the field is its --help."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import hashlib
import http.client
import inspect
import math
import re
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

import common
from harness import checkpoints
from harness.checkpoints import Checkpoint
from harness.errors import EXIT_USER_ERROR, UserError

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_BYTES, DATA_MD5 = 1_115_394, "6fb458f1232090904fb40fe944165e91"  # tiny Shakespeare's size and checksum


@dataclasses.dataclass
class Run:
    """Everything a stage's main() needs besides its model: config, device, data and the command line."""

    stage: str
    config: Any
    args: argparse.Namespace
    device: torch.device
    tokenizer: common.CharTokenizer
    checkpoint_path: Path
    checkpoint: Checkpoint | None = None  # the loaded checkpoint, with --sample or --resume
    init_checkpoint: Checkpoint | None = None  # --init_from's checkpoint, whose weights the Trainer loads
    weights_origin: dict[str, Any] | None = None  # where the weights started: --init_from's, or the resumed run's
    data: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # "train", "val": (N,) ids on the device
    train_gen: torch.Generator | None = None  # draws the training batches; saved in checkpoints
    eval_gen: torch.Generator | None = None  # draws the estimate's batches; seeded afresh at each step
    preset: str | None = None  # the preset the stage's defaults are taken with (stage 10)
    at_defaults: bool = False  # the training settings are the stage's defaults: its reference loss applies

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def start(stage_file: str, config_cls: type, doc: str | None, argv: list[str] | None = None, presets=None) -> Run:
    """Parse the command line, choose the device, seed, and load the text and any checkpoint into a Run."""
    stage = Path(stage_file).stem
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(stage, doc, config_cls, presets)
    args = parser.parse_args(argv)
    if args.sample and args.init_from is not None:
        raise UserError("--init_from starts training from a checkpoint, --sample only samples one: drop one of them")
    device = pick_device(args.device)
    common.seed_everything(args.seed)
    checkpoint_path = args.checkpoint or checkpoints.default_path(stage)
    starting = args.init_from is not None and not args.resume  # a new run from --init_from's weights
    if args.init_from is not None and args.resume and not checkpoint_path.exists():
        raise UserError(
            f"no checkpoint at {checkpoint_path} to resume; drop --resume to start a run from {args.init_from}"
        )
    if starting:
        check_init_from(args.init_from, checkpoint_path)
    ckpt = checkpoints.load(checkpoint_path, stage) if args.sample or args.resume else None
    init_ckpt = checkpoints.load(args.init_from, stage, "--init_from") if starting else None
    config, preset = resolve_config(config_cls, args, explicit_flags(parser, argv), presets, device, ckpt)
    print(f"device: {device}")
    run = Run(stage, config, args, device, None, checkpoint_path, ckpt, init_ckpt, ckpt and ckpt.init_from)
    if args.sample:
        run.tokenizer = common.CharTokenizer(ckpt.vocab)
        check_sampling_flags(args, run.tokenizer)
        return run

    text, source = load_text(args.data)
    texts = {str(source): text} | {f"--vocab_from {p}": read_text(p, "--vocab_from") for p in args.vocab_from or []}
    base = ckpt or init_ckpt  # the checkpoint whose vocabulary this run keeps, if any
    if base is not None:
        check_vocabulary(texts, checkpoint_path if ckpt else args.init_from, base.vocab, args.resume)
    run.tokenizer = common.CharTokenizer(base.vocab if base else "".join(sorted(set().union(*texts.values()))))
    check_sampling_flags(args, run.tokenizer)
    ids = run.tokenizer.encode_text(text)  # (N,) int64
    train_data, val_data = common.split_data(ids)
    if len(val_data) <= config.block_size:
        raise UserError(
            f"{source} is too short: its validation split (the last 10%) has {len(val_data)} characters, and "
            f"block_size {config.block_size} needs {config.block_size + 1}; use a longer text or a smaller --block_size"
        )
    print(
        f"data: {source} — {len(ids):,} characters, vocabulary {run.vocab_size}, "
        f"{len(train_data):,} train / {len(val_data):,} val"
    )
    checkpoints.check_writable(checkpoint_path)
    # the text goes to the device once (a few MB), so each batch is gathered where it is used
    run.data = {"train": train_data.to(device), "val": val_data.to(device)}
    run.train_gen = torch.Generator().manual_seed(args.seed)
    run.eval_gen = torch.Generator()  # the Trainer seeds it afresh at each step
    if starting:
        run.weights_origin = weights_origin(args.init_from, init_ckpt)
    # the reference loss is for the stage's defaults from scratch, with the text's own vocabulary
    own_vocabulary = run.tokenizer.chars == "".join(sorted(set(text))) and run.weights_origin is None
    run.preset = preset
    run.at_defaults = own_vocabulary and at_defaults(config, config_cls, presets, preset, args.data)
    return run


@functools.cache  # reading a class's source parses its whole file
def field_help(config_cls: type) -> dict[str, str]:
    """The comment after each field of a Config (or of a class it builds on): that flag's --help."""
    helps = {}
    for cls in reversed(config_cls.__mro__):  # a field redefined in a subclass takes the subclass's comment
        with contextlib.suppress(OSError, TypeError):  # no source to read (object): no help
            source = inspect.getsource(cls)
            for m in re.finditer(r"^\s*(\w+)\s*:\s*[\w\[\], |]+=\s*[^#\n]*#\s*(.*)$", source, re.MULTILINE):
                helps[m.group(1)] = m.group(2).replace("%", "%%")  # argparse formats help text with %
    return helps


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in --help unless it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "") or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for unknown flags and one line per error."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # "-1e-3" is a value to check ("must be 0 or more"), not a flag: argparse's own pattern misses exponents
        self._negative_number_matcher = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?$", re.IGNORECASE)

    def error(self, message: str) -> NoReturn:
        if m := re.match(r"unrecognized arguments: (.*)", message):
            message = f"unknown argument(s): {self.suggest(m.group(1).split())}"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}; see --help for the allowed flags\n")

    def suggest(self, unknown: list[str]) -> str:
        """The unknown flags, each with the closest known one: "--max_iter (did you mean --max_iters?)"."""
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        said = []
        for arg in [a for a in unknown if a.startswith("-")] or unknown:  # the flags, not their values
            close = difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6)
            said.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        return ", ".join(said)


def checked(kind: type, ok: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse type: the text as kind (a finite number), then ok(value); each error names its rule."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n int' if kind is int else ' number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {requirement}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def positive(kind: type) -> Callable[[str], Any]:
    return checked(kind, lambda v: v > 0, "must be greater than 0")


seed = checked(int, lambda v: 0 <= v < 2**32, f"must be from 0 to {2**32 - 1}")  # numpy's seeds are 32-bit


def field_check(f: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse type of a number field: its kind, and the bounds its kind and metadata set."""
    kind = f.type if f.type in (int, float) else type(f.default)  # `x: float = 1` is a float
    low, below = f.metadata.get("min", 1 if kind is int else 0), f.metadata.get("below")
    if below is not None:
        requirement = f"must be at least {low} and below {below}"
    else:
        requirement = "must be greater than 0" if (low, kind) == (1, int) else f"must be {low} or more"
    return checked(kind, lambda v: v >= low and (below is None or v < below), requirement)


def build_parser(stage: str, doc: str | None, config_cls: type, presets: dict[str, dict] | None) -> Parser:
    """A flag for each Config field, then the flags every stage shares."""
    parser = Parser(
        prog=f"python stages/{stage}.py",
        description=(doc or "").strip().split("\n\n")[0],
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # "--max_iter 3" must be an error, not silently --max_iters
    )
    hp = parser.add_argument_group("hyperparameters (the stage's Config)")
    helps = field_help(config_cls)
    own = config_cls.__dict__.get("__annotations__", {})  # the stage's own fields first, then those it builds on
    for f in sorted(dataclasses.fields(config_cls), key=lambda f: f.name not in own):
        if f.type in (bool, "bool"):
            accepts = {"action": argparse.BooleanOptionalAction}
        else:
            accepts = {"type": field_check(f), "metavar": field_check(f).__name__.upper()}
        hp.add_argument(f"--{f.name}", default=f.default, help=helps.get(f.name), **accepts)
    run = parser.add_argument_group("running")
    if presets:
        sets = "; ".join(f"{n} sets {', '.join(f'{k}={v}' for k, v in p.items())}" for n, p in presets.items() if p)
        auto = f"auto: the one named after the device, else {next(iter(presets))}; flags typed still win. "
        auto += "The defaults above are the Config's, before a preset"
        run.add_argument("--preset", choices=["auto", *presets], default="auto", help=f"{auto}. {sets}")
    devices = ["auto", "cuda", "mps", "cpu"]
    run.add_argument("--device", choices=devices, default="auto", help="where to compute; auto: cuda, mps, then cpu")
    run.add_argument("--seed", type=seed, default=1337, metavar="INT", help="random seed, for reproducible runs")
    path = {"type": Path, "metavar": "PATH"}
    run.add_argument("--data", **path, help="train on this UTF-8 text file, not tiny Shakespeare")
    run.add_argument("--checkpoint", **path, help=f"default: checkpoints/{stage}.pt")
    init = "fine-tune: start from this checkpoint's weights and vocabulary (same stage and sizes), fresh optimizer"
    run.add_argument("--init_from", **path, help=init + ", step 0")
    vocab = "build the vocabulary from --data and these text files, to fine-tune on them later with --init_from"
    run.add_argument("--vocab_from", type=Path, metavar="FILE", nargs="+", action="extend", help=vocab)
    modes = ["default", "reduce-overhead", "max-autotune"]
    compile_help = "torch.compile the model in MODE (reduce-overhead, max-autotune: CUDA graphs); pays off on a GPU"
    run.add_argument("--compile", nargs="?", const="default", choices=modes, metavar="MODE", help=compile_help)
    bf16 = "bfloat16: the forward pass under autocast, fast on recent GPUs; the weights stay float32"
    run.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help=bf16)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--sample", action="store_true", help="load the checkpoint and only generate text")
    mode.add_argument("--resume", action="store_true", help="continue training from the checkpoint")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (default: start from a newline)")
    count, rate = positive(int), positive(float)
    gen.add_argument("--num_tokens", type=count, default=500, metavar="INT", help="how many characters to generate")
    gen.add_argument("--temperature", type=rate, default=1.0, metavar="FLOAT", help="below 1: safer; above 1: wilder")
    top_k = "sample among the k likeliest characters (default: all)"
    gen.add_argument("--top_k", type=count, metavar="INT", help=top_k)
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags actually typed on the command line (not left at their defaults)."""
    by_option = {o: a.dest for a in parser._actions for o in a.option_strings}
    names = [arg.split("=")[0] for arg in argv]
    return {by_option.get(n, by_option.get("--" + n.removeprefix("--no-"))) for n in names} - {None}


def config_error(message: str, values: dict[str, Any], origin: dict[str, str]) -> UserError:
    """A Config's own ValueError as one line: the first mention of each field gets its value and, for
    a value not typed on this command line, where it came from: "n_embd (128, from preset cpu)"."""
    for name, value in values.items():
        named = f"{name} ({value}{f', from {origin[name]}' if name in origin else ''})".replace("\\", "\\\\")
        message = re.sub(rf"\b{re.escape(name)}\b", named, message, count=1)
    return UserError(message)


def resolve_config(config_cls: type, args, given: set[str], presets: dict | None, device, ckpt) -> tuple[Any, Any]:
    """The stage's Config and preset. Its values come from, in rising order: the defaults, a preset, the
    checkpoint's (with --sample and --resume), and the flags typed on this command line."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    origin: dict[str, str] = {}  # where a value not typed on this command line came from, for error messages
    auto, preset = presets and args.preset == "auto", presets and args.preset
    if auto:  # the preset named after the device ("cpu"), else the first one
        preset = device.type if device.type in presets else next(iter(presets))
    if preset and ckpt is None:
        changed = {name: value for name, value in presets[preset].items() if name not in given}
        sets = "; it sets " + ", ".join(f"{name} {value}" for name, value in changed.items()) if changed else ""
        print(
            f"preset: {preset} ({f'chosen for {device.type}; --preset picks another' if auto else 'asked for'}){sets}"
        )
        values.update(changed)
        origin.update(dict.fromkeys(changed, f"preset {preset}"))
    elif preset and "preset" in given:
        print("--preset is ignored with --sample and --resume: the checkpoint's hyperparameters apply")
    if ckpt is not None:
        gone = ", ".join(f"{k} {v}" for k, v in ckpt.config.items() if k not in values)
        if gone and args.resume:  # the run would go on with another recipe
            raise UserError(
                f"the checkpoint was trained with {gone}, which this stage no longer has, so it cannot be resumed; "
                "--sample still samples from it, or train afresh without --resume"
            )
        for name in values.keys() & ckpt.config.keys() - given:
            values[name], origin[name] = ckpt.config[name], "the checkpoint"
    try:
        return config_cls(**values), preset or None
    except ValueError as e:  # the Config's own check of how its fields fit together (__post_init__)
        raise config_error(str(e), values, origin) from None


def pick_device(requested: str) -> torch.device:
    """--device: auto is common.choose_device(); asking for a device that is absent is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to this PyTorch; use --device cpu (or auto)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return common.choose_device() if requested == "auto" else torch.device(requested)


def download(url: str, dest: Path, size: int = DATA_BYTES, md5: str = DATA_MD5) -> None:
    """url to dest, written (whole) only once its size and md5 are right: a failed download leaves no file."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        if len(body) != size or hashlib.md5(body).hexdigest() != md5:
            raise ValueError(f"not the expected file: {len(body):,} bytes, not {size:,} with md5 {md5}")
        checkpoints.write_atomically(dest, lambda f: f.write(body))
    except (OSError, ValueError, http.client.HTTPException) as e:  # no network, a cut-off reply, a full disk
        raise UserError(
            f"could not download the text from {url} ({getattr(e, 'reason', e)}); nothing was saved: "
            f"put a copy of tiny Shakespeare at {dest}, or train on your own file with --data PATH"
        ) from None


def read_text(path: Path, flag: str = "--data") -> str:
    """common.read_text(path), after one clear error for each way the file can be unusable."""
    named = f"{flag} {path}" if flag else str(path)  # as the user gave it, or the default path
    if not path.is_file():
        raise UserError(f"{named}{' is a directory' if path.is_dir() else ': no such file'}; give a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not raw:
        raise UserError(f"{path} is empty; give a UTF-8 text file with at least a few thousand characters")
    if b"\x00" in raw:  # binary files hold NUL bytes, and so do UTF-16 and UTF-32 (PowerShell 5's `>` writes UTF-16)
        raise UserError(f"{path} holds NUL bytes: it is binary, or UTF-16 or UTF-32 text; give UTF-8 (iconv converts)")
    try:
        raw.decode("utf-8")  # a BOM (Notepad's mark) is UTF-8 too: common.read_text drops it
    except UnicodeDecodeError as e:
        at = f"byte 0x{raw[e.start]:02x} at offset {e.start}"
        raise UserError(f"{path} is not UTF-8 text ({at}); convert it to UTF-8 (with iconv, say)") from None
    return common.read_text(path)


def load_text(data: Path | None) -> tuple[str, Path]:
    """The training text and its path: --data when given, else tiny Shakespeare, downloaded on first use."""
    if data is not None:
        return read_text(data), data
    if not common.DATA_PATH.exists():
        print(f"{common.DATA_PATH} not found: downloading tiny Shakespeare (1.1 MB) once")
        download(DATA_URL, common.DATA_PATH)
    return read_text(common.DATA_PATH, flag=""), common.DATA_PATH


def check_sampling_flags(args: argparse.Namespace, tokenizer: common.CharTokenizer) -> None:
    """Check --prompt and --top_k against the vocabulary before any training, not after it."""
    try:
        tokenizer.encode(args.prompt)
    except ValueError as e:  # names every character outside the vocabulary
        raise UserError(f"{e}; use only characters that occur in the training text") from None
    if args.top_k is not None and args.top_k > (n := tokenizer.vocab_size):
        raise UserError(f"--top_k {args.top_k} is larger than the vocabulary ({n} characters); use 1 to {n}")


def check_init_from(init_from: Path, checkpoint_path: Path) -> None:
    """--init_from must be a file that training leaves alone: neither the run's own checkpoint nor its backup."""
    places = {checkpoint_path: "this run's own --checkpoint"}
    places[checkpoints.previous_path(checkpoint_path)] = "where this run copies the checkpoint it replaces"
    for written, what in places.items():
        with contextlib.suppress(OSError):  # a file that is not there is not one that training writes
            if init_from.resolve() == written.resolve() or init_from.samefile(written):
                raise UserError(
                    f"--init_from {init_from} is {what}, which training would overwrite; pass another --checkpoint "
                    "for the new run (or use --resume to continue that one)"
                )


def weights_origin(path: Path, source: Checkpoint) -> dict[str, Any]:
    """What each checkpoint of a run from --init_from records about where its weights came from."""
    val_loss = source.history[-1]["val_loss"] if source.history else None
    return {"path": str(path.resolve()), "step": source.step, "val_loss": val_loss}


def check_vocabulary(texts: dict[str, str], ckpt_path: Path, vocab: str, resume: bool) -> None:
    """A run from a checkpoint keeps its vocabulary, so that each id means what it meant in training:
    each text (named as the user gave it) must use only the checkpoint's characters."""
    for i, (name, text) in enumerate(texts.items()):  # first the training text, then each --vocab_from file
        if lacking := sorted(set(text) - set(vocab)):
            shown = ", ".join(map(repr, lacking[:5])) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            advice = "drop --vocab_from, or train afresh with it"
            if i == 0:
                advice = "resume with the same --data, or train afresh without --resume"
                if not resume:
                    advice = f"pre-train with --vocab_from {name}, or map the model's rows by character onto this text"
            raise UserError(
                f"{name} has {len(lacking)} character{'s' * (len(lacking) > 1)} ({shown}) that {ckpt_path} has no "
                f"ids for, and a run from a checkpoint keeps its vocabulary; {advice}"
            )


def at_defaults(config: Any, config_cls: type, presets: dict | None, preset: str | None, data: Any) -> bool:
    """Whether config is the stage's defaults (with preset applied) on tiny Shakespeare."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)} | ((presets or {}).get(preset) or {})
    return data is None and dataclasses.asdict(config) == defaults
