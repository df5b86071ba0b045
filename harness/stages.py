"""The stage files: found by number or name, and imported without running them."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import common
from harness.errors import UserError

STAGE_DIR = common.ROOT / "stages"


def stage_files() -> list[Path]:
    return sorted(STAGE_DIR.glob("[0-9][0-9]_*.py"))


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
        path = next(iter(STAGE_DIR.glob(f"{name.zfill(2)}_*.py")), path)
    spec = importlib.util.spec_from_file_location(f"stage_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: inspect and dataclasses look modules up here
    spec.loader.exec_module(module)
    return module


def previous_stage(stage: str) -> str | None:
    names = stage_names()
    return names[names.index(stage) - 1] if stage in names and names.index(stage) > 0 else None
