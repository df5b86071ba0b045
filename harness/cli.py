"""The command line: every field of a stage's Config is a flag, checked before anything runs.

A field's type says what it accepts: a bool is a switch (--name, --no-name), an int a count or a size
(1 or more), a float a rate or a weight (finite, 0 or more). Its metadata can move the bounds:
metadata={"min": 0} lets an int be 0, {"below": 1} keeps a number below 1. The comment after a field
is its --help. How fields fit together is the Config's own __post_init__, whose ValueError becomes
one line naming each field it mentions, its value and where that value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from harness.errors import EXIT_USER_ERROR, UserError


@functools.cache  # reading a class's source parses its whole file
def field_help(config_cls: type) -> dict[str, str]:
    """The comment after each field of a Config (or of a class it builds on): that flag's --help."""
    helps = {}
    for cls in reversed(config_cls.__mro__):  # a field redefined in a subclass takes the subclass's comment
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # no source to read (object, a generated class): no help
            continue
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
        else:  # `x: float = 1` is a float
            kind = f.type if f.type in (int, float) else type(f.default)
            accepts = {"type": field_check(f), "metavar": kind.__name__.upper()}
        hp.add_argument(f"--{f.name}", default=f.default, help=helps.get(f.name), **accepts)
    run = parser.add_argument_group("running")
    if presets:
        sets = "; ".join(f"{n} sets {', '.join(f'{k}={v}' for k, v in p.items())}" for n, p in presets.items() if p)
        run.add_argument(
            "--preset",
            choices=["auto", *presets],
            default="auto",
            help=f"a named set of hyperparameters; auto picks the one named after the device if there is one, "
            f"else {next(iter(presets))}; flags given explicitly still win. The defaults listed here are the "
            f"Config's; {sets}",
        )
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
    compile_help = "torch.compile the model for training in MODE (reduce-overhead, max-autotune: CUDA graphs); "
    compile_help += "it pays off on a GPU, while on a CPU compiling takes longer than it saves"
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


def flag_value(flags: list[str], name: str) -> str | None:
    """The value of the last `name VALUE` or `name=VALUE` in flags (argparse lets the last one win)."""
    value = None
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
    return value


def config_error(message: str, values: dict[str, Any], origin: dict[str, str]) -> UserError:
    """A Config's own ValueError as one line: the first mention of each field gets its value and, for
    a value not typed on this command line, where it came from: "n_embd (128, from preset cpu)"."""
    for name, value in values.items():
        named = f"{name} ({value}{f', from {origin[name]}' if name in origin else ''})".replace("\\", "\\\\")
        message = re.sub(rf"\b{re.escape(name)}\b", named, message, count=1)
    return UserError(message)


def preset_for(presets: dict[str, dict], device_type: str) -> str:
    """--preset auto: the preset named after the device ("cpu"), else the first one."""
    return device_type if device_type in presets else next(iter(presets))


def resolve_config(config_cls: type, args, given: set[str], presets: dict | None, device, ckpt) -> Any:
    """The stage's Config from, in rising order: its defaults, a preset, the checkpoint's hyperparameters
    (with --sample and --resume), and the flags typed on this command line. Never --init_from's: its
    weights must fit the model these build, which is checked when they load."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    origin: dict[str, str] = {}  # where a value not typed on this command line came from, for error messages
    if presets and ckpt is not None and "preset" in given:
        print("--preset is ignored with --sample and --resume: the checkpoint's hyperparameters apply")
    elif presets and ckpt is None:
        preset, why = args.preset, "asked for with --preset"
        if preset == "auto":
            preset = preset_for(presets, device.type)
            others = " or ".join(f"--preset {name}" for name in presets if name != preset)
            why = f"chosen for {device.type}; {others} forces {'the other' if len(presets) == 2 else 'another'}"
        changed = {name: value for name, value in presets[preset].items() if name not in given}
        print(f"preset: {preset} ({why})")
        if changed:
            print("  it sets " + ", ".join(f"{name} {value}" for name, value in changed.items()))
        values.update(changed)
        origin.update({name: f"preset {preset}" for name in changed})
    if ckpt is not None:
        gone = {name: value for name, value in ckpt.config.items() if name not in values}
        if gone and args.resume:
            raise UserError(
                f"the checkpoint was trained with {', '.join(f'{k} {v}' for k, v in gone.items())}, which this stage "
                "no longer has, so it cannot be resumed as it was trained; --sample still samples from it, or start "
                "afresh: without --resume (the old file is kept as .prev) or with another --checkpoint"
            )
        for name in values.keys() & ckpt.config.keys() - given:
            values[name], origin[name] = ckpt.config[name], "the checkpoint"
    try:
        return config_cls(**values)
    except ValueError as e:  # the Config's own check of how its fields fit together (__post_init__)
        raise config_error(str(e), values, origin) from None
