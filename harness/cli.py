"""The command line: every field of a stage's Config is a flag, checked before anything runs.

Besides the hyperparameters: --device, --seed, --data, --checkpoint, --sample/--resume, the
sampling flags, --compile/--dtype and, for a stage with presets, --preset. Each bad value is one
line that names the rule it breaks; an unknown flag suggests the closest known one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from harness.accelerate import FAST_DEFAULT
from harness.errors import EXIT_USER_ERROR, UserError


def _field_help(config_cls: type) -> dict[str, str]:
    """The comment after each field of a stage's Config is that flag's --help text."""
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
        if (
            action.default is None
            or action.default is False
            or action.default == ""
            or "default" in (action.help or "")
        ):
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


def positive(kind: type) -> Callable[[str], Any]:
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
            hp.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name)
            )
            continue
        parse = _fraction if f.name == "dropout" else _count if f.name in MAY_BE_ZERO else positive(type(f.default))
        hp.add_argument(
            f"--{f.name}",
            type=parse,
            default=f.default,
            metavar=type(f.default).__name__.upper(),
            help=helps.get(f.name),
        )
    run = parser.add_argument_group("running")
    if presets:
        run.add_argument(
            "--preset",
            choices=["auto", *presets],
            default="auto",
            help="a named set of hyperparameters; auto picks video with cuda or mps, cpu otherwise; "
            "flags given explicitly "
            "still win. The defaults listed here are video's; "
            + "; ".join(
                f"{name} sets {', '.join(f'{k}={v}' for k, v in values.items())}"
                for name, values in presets.items()
                if values
            ),
        )
    run.add_argument(
        "--device",
        choices=["auto", "cuda", "mps", "cpu"],
        default="auto",
        help="where to compute; auto tries cuda, then mps, then cpu",
    )
    run.add_argument(
        "--seed", type=_seed, default=1337, metavar="INT", help="random seed, for reproducible runs (0 to 2**32 - 1)"
    )
    run.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="train on this UTF-8 text file instead of tiny Shakespeare",
    )
    run.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"checkpoint file (default: checkpoints/{stage}.pt)",
    )
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
    run.add_argument(
        "--fast",
        choices=["auto", "on", "off"],
        default=FAST_DEFAULT,
        help="the fast path for CUDA GPUs: the step recorded as CUDA graphs (torch.compile), bfloat16 where the "
        "GPU has it, TF32 matmuls; auto uses it where it can work and says why not otherwise, on forces it. "
        "Not yet the default: it has not been measured on a GPU here",
    )
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--sample", action="store_true", help="load the checkpoint and only generate text")
    mode.add_argument("--resume", action="store_true", help="continue training from the checkpoint")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (default: start from a newline)")
    gen.add_argument(
        "--num_tokens", type=positive(int), default=500, metavar="INT", help="how many characters to generate"
    )
    gen.add_argument(
        "--temperature",
        type=positive(float),
        default=1.0,
        metavar="FLOAT",
        help="below 1: safer text, above 1: wilder",
    )
    gen.add_argument(
        "--top_k",
        type=positive(int),
        default=None,
        metavar="INT",
        help="sample only among the k likeliest characters (default: all)",
    )
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
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
        raise UserError(
            f"{named('n_embd')} must be divisible by {named('n_head')}: each head gets n_embd // n_head channels"
        )


def resolve_config(
    config_cls: type,
    args: argparse.Namespace,
    given: set[str],
    presets: dict[str, dict] | None,
    device: Any,
    ckpt: dict | None,
) -> Any:
    """The stage's Config from, in rising order: its defaults, a preset, the checkpoint's
    hyperparameters (with --sample and --resume), and the flags typed on this command line."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    origin: dict[str, str] = {}  # where a value not typed on this command line came from, for error messages
    if presets and ckpt is not None:  # with a checkpoint, its own hyperparameters apply
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
    if ckpt is not None:
        for name in values:
            if name not in given and name in ckpt["config"]:
                values[name] = ckpt["config"][name]
                origin[name] = "the checkpoint"
    config = config_cls(**values)
    check_config(config, origin)
    return config
