"""One run of a stage: start() reads the command line, picks the device, seeds, and loads the text
and/or the checkpoint; the Run it returns holds what the stage's main() needs besides its model.

The vocabulary: a run from scratch takes the characters of --data and of each --vocab_from file; a
run from a checkpoint (--resume, --init_from, --sample) takes the checkpoint's, so that every id
means the character it meant in training, and the text (and any --vocab_from file) must use only
characters it holds."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

import common
from harness import checkpoints, cli, files, references
from harness.errors import UserError
from harness.stages import stage_name


@dataclasses.dataclass
class Run:
    """Everything a stage's main() needs besides its model: config, device, data and the command line."""

    stage: str
    config: Any
    args: argparse.Namespace
    device: torch.device
    tokenizer: common.CharTokenizer
    checkpoint_path: Path
    checkpoint: checkpoints.Checkpoint | None  # the loaded checkpoint, with --sample or --resume
    # "train" and "val": (N,) token ids on the device; empty with --sample
    data: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    train_gen: torch.Generator | None = None  # draws the training batches; saved in checkpoints
    eval_gen: torch.Generator | None = None  # draws the estimate's batches; seeded afresh at each step
    preset: str | None = None  # the preset the stage's defaults are taken with (stage 10)
    at_defaults: bool = False  # the training settings are the stage's defaults: its reference loss applies
    init_from: checkpoints.Checkpoint | None = None  # --init_from's checkpoint, whose weights the Trainer loads
    # where this run's weights started, recorded in each checkpoint it saves: from --init_from, or kept
    # from the checkpoint a --resume continues; None for a run from scratch
    weights_origin: dict[str, Any] | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def pick_device(requested: str) -> torch.device:
    """--device: auto is common.choose_device(); asking for a device that is absent is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to this PyTorch; use --device cpu (or auto)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return common.choose_device() if requested == "auto" else torch.device(requested)


def check_sampling_flags(args: argparse.Namespace, tokenizer: common.CharTokenizer) -> None:
    """Check --prompt and --top_k against the vocabulary before any training, not after it."""
    try:
        tokenizer.encode(args.prompt)
    except ValueError as e:  # names every character outside the vocabulary
        raise UserError(f"{e}; use only characters that occur in the training text") from None
    if args.top_k is not None and args.top_k > tokenizer.vocab_size:
        raise UserError(
            f"--top_k {args.top_k} is larger than the vocabulary ({tokenizer.vocab_size} characters); "
            f"use 1 to {tokenizer.vocab_size}"
        )


def check_init_from(init_from: Path, checkpoint_path: Path) -> None:
    """--init_from must be a file that training leaves alone: neither the run's own checkpoint nor its backup."""
    backup = checkpoints.previous_path(checkpoint_path)
    for written, what in [
        (checkpoint_path, "is this run's own --checkpoint"),
        (backup, f"is where this run copies the checkpoint it replaces ({checkpoint_path})"),
    ]:
        with contextlib.suppress(OSError):  # a path that does not exist is no file training writes
            if init_from.resolve() == written.resolve() or (written.exists() and init_from.samefile(written)):
                raise UserError(
                    f"--init_from {init_from} {what}, which training would overwrite; pass another --checkpoint "
                    "for the new run (or use --resume to continue that one)"
                )


def weights_origin(path: Path, source: checkpoints.Checkpoint) -> dict[str, Any]:
    """What each checkpoint of a run from --init_from records about where its weights came from."""
    val_loss = source.history[-1]["val_loss"] if source.history else None
    return {"path": str(path.resolve()), "step": source.step, "val_loss": val_loss}


def some_characters(chars: set[str]) -> str:
    """A few characters, repr'd, and how many: "2 characters ('Z', 'ë')", "7 characters ('!', ... and 2 more)"."""
    chars = sorted(chars)
    shown = ", ".join(repr(ch) for ch in chars[:5]) + (f" and {len(chars) - 5} more" if len(chars) > 5 else "")
    return f"{len(chars)} character{'s' if len(chars) != 1 else ''} ({shown})"


def choose_tokenizer(text: str, source: Path, extra: dict[Path, str], ckpt, ckpt_path, resume: bool):
    """The run's vocabulary (see the module's docstring). text: --data's, read from source; extra: each
    --vocab_from file's text; ckpt: the checkpoint a --resume or --init_from run goes on from (at ckpt_path)."""
    if ckpt is None:
        return common.CharTokenizer("".join(sorted(set(text).union(*extra.values()))))
    lacking = set(text) - set(ckpt.vocab)
    if lacking and resume:
        raise UserError(
            f"{ckpt_path} was trained on a text with another vocabulary: {source} has {some_characters(lacking)} "
            "that it lacks; resume with the same --data, or train afresh without --resume"
        )
    if lacking:  # the model has no embedding row, and no output, for them
        raise UserError(
            f"{source} has {some_characters(lacking)} that --init_from {ckpt_path} has no ids for; pre-train with "
            f"--vocab_from {source} so that its vocabulary covers this text, or map the model's rows by "
            "character onto this text's vocabulary"
        )
    for path, extra_text in extra.items():
        if lacking := set(extra_text) - set(ckpt.vocab):
            raise UserError(
                f"--vocab_from {path} has {some_characters(lacking)} that {ckpt_path} lacks, and a run from a "
                "checkpoint keeps its vocabulary; drop --vocab_from, or train afresh with it"
            )
    return common.CharTokenizer(ckpt.vocab)


def start(stage_file: str, config_cls: type, doc: str | None, argv: list[str] | None = None, presets=None) -> Run:
    """Parse the command line, choose the device, seed, and load the data and/or the checkpoint.

    With --sample or --resume the hyperparameters come from the checkpoint, except flags typed on
    this command line; with --sample the vocabulary comes from the checkpoint and no text is read.
    With --init_from the hyperparameters are a fresh run's and the weights (loaded by the Trainer)
    and the vocabulary are the checkpoint's; with --resume as well, --resume wins: the run continues
    from its own checkpoint, which records where it started.
    """
    stage = stage_name(stage_file)
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.build_parser(stage, doc, config_cls, presets)
    args = parser.parse_args(argv)
    if args.sample and args.init_from is not None:
        raise UserError(
            "--init_from starts training from a checkpoint's weights and --sample only generates text; "
            "drop one of them (to sample from a checkpoint: --sample --checkpoint PATH)"
        )
    given = cli.explicit_flags(parser, argv)
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
    init_from = checkpoints.load(args.init_from, stage, "--init_from") if starting else None
    config = cli.resolve_config(config_cls, args, given, presets, device, ckpt)
    preset = (cli.preset_for(presets, device.type) if args.preset == "auto" else args.preset) if presets else None
    print(f"device: {device}")

    if args.sample:
        tokenizer = common.CharTokenizer(ckpt.vocab)
        check_sampling_flags(args, tokenizer)
        return Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt, weights_origin=ckpt.init_from)

    text, source = files.load_text(args.data)
    extra = {path: files.read_text(path, "--vocab_from") for path in args.vocab_from or []}
    vocab_path = checkpoint_path if ckpt is not None else args.init_from
    tokenizer = choose_tokenizer(text, source, extra, ckpt or init_from, vocab_path, args.resume)
    check_sampling_flags(args, tokenizer)
    ids = tokenizer.encode_text(text)  # (N,) int64
    train_data, val_data = common.split_data(ids)
    if len(val_data) <= config.block_size:
        raise UserError(
            f"{source} is too short: its validation split (the last 10%) has {len(val_data)} characters, "
            f"and block_size {config.block_size} needs at least {config.block_size + 1}; "
            "use a longer text or a smaller --block_size"
        )
    print(
        f"data: {source} — {len(ids):,} characters, vocabulary {tokenizer.vocab_size}, "
        f"{len(train_data):,} train / {len(val_data):,} val"
    )
    checkpoints.check_writable(checkpoint_path)
    # the text goes to the device once (a few MB), so each batch is gathered where it is used
    data = {"train": train_data.to(device), "val": val_data.to(device)}
    train_gen = torch.Generator().manual_seed(args.seed)
    eval_gen = torch.Generator()  # the Trainer seeds it afresh at each step
    # a resumed run keeps the record of where it started
    origin = weights_origin(args.init_from, init_from) if starting else ckpt and ckpt.init_from
    # the reference loss is for the stage's defaults from scratch, with the text's own vocabulary
    at_defaults = references.at_defaults(config, config_cls, presets, preset, args.data)
    at_defaults = at_defaults and tokenizer.chars == "".join(sorted(set(text))) and origin is None
    run = Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt, data, train_gen, eval_gen)
    return dataclasses.replace(run, preset=preset, at_defaults=at_defaults, init_from=init_from, weights_origin=origin)
