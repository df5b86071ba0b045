"""The stage files: found by number or name, and imported without running them."""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import common
from harness.errors import UserError

STAGE_DIR = common.ROOT / "stages"
# the project's stages, in order; a learner's own file beside them (stages/04_mine.py) is none of them
STAGES = tuple(
    "01_bigram 02_position_embedding 03_causal_average 04_self_attention_head 05_multi_head_attention "
    "06_feed_forward 07_transformer_blocks 08_residual_connections 09_layer_norm 10_gpt".split()
)


def stage_files() -> list[Path]:
    return [STAGE_DIR / f"{s}.py" for s in STAGES if (STAGE_DIR / f"{s}.py").exists()]


def stage_names() -> list[str]:
    """Every stage, in order: "01_bigram", "02_position_embedding", ..."""
    return [p.stem for p in stage_files()]


def stage_name(stage_file: str) -> str:
    """ "stages/01_bigram.py" -> "01_bigram"."""
    return Path(stage_file).stem


def resolve_stage(name: str) -> str:
    """ "9", "09", "09_layer_norm", "layer_norm" or "stages/09_layer_norm.py" -> "09_layer_norm"."""
    names, text = stage_names(), name.strip()
    text = Path(text).stem if text.endswith(".py") else text
    found = [s for s in names if text in (s, s[3:]) or (text.isdigit() and int(s[:2]) == int(text))]
    if len(found) == 1:
        return found[0]
    if not names:
        raise UserError(f"no stage {name!r}: {STAGE_DIR} holds no stage files")
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(
        f"no stage {name!r}{hint}; give a number from {names[0][:2]} to {names[-1][:2]} or a name such as {names[0]}"
    )


def load_stage(name: str) -> ModuleType:
    """Import stages/<name>.py by path (its name starts with a digit, so `import` cannot); name may
    also be just its number ("09"). Importing a stage reads no data and trains nothing."""
    path = STAGE_DIR / f"{name}.py"
    if not path.exists():
        path = next((p for p in stage_files() if p.stem[:2] == name.zfill(2)), path)
    spec = importlib.util.spec_from_file_location(f"stage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: inspect and dataclasses look modules up here
    spec.loader.exec_module(module)
    return module


def previous_stage(stage: str) -> str | None:
    names = stage_names()
    return names[names.index(stage) - 1] if stage in names and names.index(stage) > 0 else None


def stage_flag(flags: list[str], name: str) -> str | None:
    """The value a stage reads for flag name among flags (the last one given), or None."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(name)
    return vars(parser.parse_known_args(flags)[0])[name.removeprefix("--")]
