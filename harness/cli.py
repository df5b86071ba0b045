"""The command line: every field of a stage's Config is a flag, checked before anything runs.

Besides the hyperparameters: --device, --seed, --data, --checkpoint, --init_from, --vocab_from,
--sample/--resume, the sampling flags, --compile, --dtype and, for a stage with presets, --preset.
Each bad value is one line that names the rule it breaks; an unknown flag suggests the closest one.

What a Config field accepts follows from the field itself, so a new field needs nothing here:
  bool    a switch: --name and --no-name
  int     a count or a size (steps, characters, layers): 1 or more
  float   a rate or a weight: a finite number, 0 or more
A field's metadata can move the bounds: field(default=100, metadata={"min": 0}) lets an int be 0,
metadata={"below": 1} keeps a number below 1. Relations between fields (n_embd divisible by
n_head, say) are the Config's own: its __post_init__ raises ValueError, which becomes one line
naming each field it mentions, its value and where that came from.
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

from harness.errors import EXIT_USER_ERROR, UserError


def _field_help(config_cls: type) -> dict[str, str]:
    """The comment after each field of a stage's Config (or of a class it builds on) is that flag's
    --help text."""
    helps = {}
    for cls in reversed(config_cls.__mro__):  # a field redefined in a subclass takes the subclass's comment
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):  # no source to read (object, a generated class): flags without help
            continue
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


def field_check(f: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse type of a number field: its kind, and the bounds its kind and metadata set."""
    kind = f.type if f.type in (int, float) else type(f.default)  # `x: float = 1` is a float
    low = f.metadata.get("min", 1 if kind is int else 0)
    below = f.metadata.get("below")
    if below is not None:
        requirement = f"must be at least {low} and below {below}"
    elif low == 1 and kind is int:
        requirement = "must be greater than 0"
    elif low == 0:
        requirement = "must be 0 or more"
    else:
        requirement = f"must be at least {low}"
    check = _checked(kind, lambda v: v >= low and (below is None or v < below), requirement)
    if kind is int:
        return check

    def finite(text: str) -> Any:  # nan and inf are no rates: "nan >= 0" is False, but say what is wrong
        try:
            if not math.isfinite(float(text)):
                raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        except ValueError:
            pass  # not a number at all: check says so
        return check(text)

    finite.__name__ = kind.__name__
    return finite


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
    own = config_cls.__dict__.get("__annotations__", {})  # the stage's own fields first, then those it builds on
    for f in sorted(dataclasses.fields(config_cls), key=lambda f: f.name not in own):
        if f.type in (bool, "bool"):
            hp.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name)
            )
            continue
        hp.add_argument(
            f"--{f.name}",
            type=field_check(f),
            default=f.default,
            metavar=(f.type if f.type in (int, float) else type(f.default)).__name__.upper(),
            help=helps.get(f.name),
        )
    run = parser.add_argument_group("running")
    if presets:
        run.add_argument(
            "--preset",
            choices=["auto", *presets],
            default="auto",
            help=f"a named set of hyperparameters; auto picks the one named after the device if there is one, "
            f"else {next(iter(presets))}; flags given explicitly still win. The defaults listed here are the "
            "Config's; "
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
        "--init_from",
        type=Path,
        default=None,
        metavar="PATH",
        help="fine-tune: start from this checkpoint's weights and vocabulary (same stage and sizes), "
        "with a fresh optimizer at step 0",
    )
    run.add_argument(
        "--vocab_from",
        type=Path,
        nargs="+",
        action="extend",
        default=None,
        metavar="FILE",
        help="build the vocabulary from --data and these text files, to fine-tune on them later with --init_from",
    )
    run.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        default=None,
        metavar="MODE",
        help="torch.compile the model for training, in this mode (default, or reduce-overhead: CUDA graphs); "
        "it pays off on a GPU, while on a CPU compiling takes longer than it saves",
    )
    run.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: the forward pass under autocast, fast on recent GPUs; the weights stay float32",
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
        where = f", from {origin[name]}" if name in origin else ""
        named = f"{name} ({value}{where})".replace("\\", "\\\\")  # a replacement text: backslashes escaped
        message = re.sub(rf"\b{re.escape(name)}\b", named, message, count=1)
    return UserError(message)


def preset_for(presets: dict[str, dict], device_type: str) -> str:
    """--preset auto: the preset named after the device ("cpu"), else the first one."""
    return device_type if device_type in presets else next(iter(presets))


def resolve_config(
    config_cls: type,
    args: argparse.Namespace,
    given: set[str],
    presets: dict[str, dict] | None,
    device: Any,
    ckpt: dict | None,
) -> Any:
    """The stage's Config from, in rising order: its defaults, a preset, the checkpoint's
    hyperparameters (with --sample and --resume), and the flags typed on this command line.

    Never --init_from's hyperparameters: its weights must fit the model these build, and a run from
    it otherwise takes the settings a fresh run would (its sizes are checked when its weights load)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)}
    origin: dict[str, str] = {}  # where a value not typed on this command line came from, for error messages
    if presets and ckpt is not None:  # with a checkpoint, its own hyperparameters apply
        if "preset" in given:
            print("--preset is ignored with --sample and --resume: the checkpoint's hyperparameters apply")
    elif presets:
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
    if ckpt is not None and args.resume:
        gone = {name: value for name, value in ckpt.config.items() if name not in values}
        if gone:
            shown = ", ".join(f"{name} {value}" for name, value in gone.items())
            raise UserError(
                f"the checkpoint was trained with {shown}, which this stage no longer has, so it cannot be "
                "resumed as it was trained; --sample still samples from it, or start afresh: without --resume "
                "(the old file is kept as .prev) or with another --checkpoint"
            )
    if ckpt is not None:
        for name in values:
            if name not in given and name in ckpt.config:
                values[name] = ckpt.config[name]
                origin[name] = "the checkpoint"
    try:
        return config_cls(**values)
    except ValueError as e:  # the Config's own check of how its fields fit together (__post_init__)
        raise config_error(str(e), values, origin) from None
