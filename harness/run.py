"""One run of a stage: start() reads the command line, picks the device, seeds, and loads the text
and/or the checkpoint; the Run it returns holds what the stage's main() needs besides its model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

import common
from harness import accelerate, checkpoints, cli, references, textfile
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
    eval_gen: torch.Generator | None = None  # draws the estimate's batches, apart so resuming stays exact
    # how the model trains (--fast, --compile, --dtype), set by accelerate(); the Trainer applies its TF32
    plan: accelerate.Plan = dataclasses.field(default_factory=accelerate.Plan)
    preset: str | None = None  # the preset the stage's defaults are taken with (stage 10)
    at_defaults: bool = False  # the training settings are the stage's defaults: its reference loss applies

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def sample_only(self) -> bool:
        return bool(self.args.sample)

    def accelerate(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train with: on the fast path, compiled or in bf16 when asked, else model itself."""
        if self.sample_only:  # nothing trains: generate() runs the model as it is
            return model
        self.plan = accelerate.plan_for(self.args, self.device)
        return accelerate.wrap(model, self.plan, self.device)

    def generate_text(self, model: torch.nn.Module) -> str:
        """--prompt and --num_tokens characters sampled by the stage's generate() after it."""
        args = self.args
        if args.prompt:
            idx = torch.tensor([self.tokenizer.encode(args.prompt)], device=self.device)  # (1, T)
        else:  # the newline is not part of the text returned
            idx = torch.tensor([[empty_prompt_start(self.tokenizer)]], device=self.device)  # (1, 1)
        model.eval()
        out = model.generate(idx, args.num_tokens, temperature=args.temperature, top_k=args.top_k)
        model.train()
        text = self.tokenizer.decode(out[0].tolist())
        return text if args.prompt else text[1:]


def empty_prompt_start(tokenizer: common.CharTokenizer) -> int:
    """The id an empty prompt starts from: a newline, where the text's lines start (0 if it has none)."""
    return tokenizer.stoi.get("\n", 0)


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
    parser = cli.build_parser(stage, doc, config_cls, presets)
    args = parser.parse_args(argv)
    given = cli.explicit_flags(parser, argv)
    device = pick_device(args.device)
    common.seed_everything(args.seed)

    checkpoint_path = args.checkpoint or checkpoints.default_path(stage)
    ckpt = checkpoints.load(checkpoint_path, stage) if args.sample or args.resume else None
    config = cli.resolve_config(config_cls, args, given, presets, device, ckpt)
    preset = (cli.preset_for(presets, device.type) if args.preset == "auto" else args.preset) if presets else None
    at_defaults = references.at_defaults(config, config_cls, presets, preset, args.data)
    print(f"device: {device}")

    if args.sample:
        tokenizer = common.CharTokenizer(ckpt.vocab)
        check_sampling_flags(args, tokenizer)
        return Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt)

    text, source = textfile.load_text(args.data)
    tokenizer = common.CharTokenizer.from_text(text)
    if ckpt is not None and ckpt.vocab != tokenizer.chars:
        raise UserError(
            f"{checkpoint_path} was trained on a text with another vocabulary ({len(ckpt.vocab)} characters, "
            f"here {tokenizer.vocab_size} in {source}); resume with the same --data, or train afresh without --resume"
        )
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
    eval_gen = torch.Generator().manual_seed(args.seed + 1)
    run = Run(stage, config, args, device, tokenizer, checkpoint_path, ckpt, data, train_gen, eval_gen)
    run.preset, run.at_defaults = preset, at_defaults
    return run
