"""Checkpoint files: written whole or not at all, loaded without running code, checked on load."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

import common
from harness.errors import UserError, first_line

CHECKPOINT_DIR = common.ROOT / "checkpoints"
CHECKPOINT_FORMAT = "nano-gpt-stages/1"


def default_path(stage: str) -> Path:
    return CHECKPOINT_DIR / f"{stage}.pt"


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
        custom = "" if path == default_path(stage) else f" --checkpoint {path}"
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
        raise UserError(f"{path} is damaged or not a checkpoint ({first_line(e)}); delete it and train again") from None
    except Exception as e:  # a damaged file can make the unpickler fail in any way (IndexError, EOFError, ...)
        raise UserError(f"{path} is damaged or not a checkpoint ({first_line(e)}); delete it and train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project; delete it or pass another --checkpoint")
    if ckpt.get("stage") != stage:
        raise UserError(
            f"{path} was saved by stage {ckpt.get('stage')}, not {stage}; "
            f"run stages/{ckpt.get('stage')}.py with it, or give this stage its own --checkpoint"
        )
    return ckpt


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, without the `_orig_mod.` prefix that torch.compile adds to every key."""
    model = getattr(model, "_orig_mod", model)
    return {k.removeprefix("_orig_mod."): v for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, ckpt: dict, path: Path) -> None:
    """Put a checkpoint's weights into model; a model of another size is one clear error."""
    own, theirs = plain_state_dict(model), ckpt["model"]
    mismatched = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    mismatched += [k for k in theirs if k not in own]
    if mismatched:
        sizes = ("n_embd", "n_head", "n_layer", "block_size")
        cfg = {k: v for k, v in ckpt["config"].items() if k in sizes}
        raise UserError(
            f"{path} holds a model of another size ({cfg or 'other layers'}; first difference: "
            f"{mismatched[0]}); drop the size flags to use the checkpoint's, or train afresh"
        )
    getattr(model, "_orig_mod", model).load_state_dict(theirs)


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
