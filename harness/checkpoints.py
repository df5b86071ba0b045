"""Checkpoints on disk: what one holds, reading and writing it, and the loss history beside it
(<stage>.history.csv). A checkpoint file is a plain dict of tensors and plain values, since
torch.load(..., weights_only=True) refuses anything else. Every file is written whole or not at all."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

import common
from harness.errors import UserError, first_line

CHECKPOINT_DIR = common.ROOT / "checkpoints"
CHECKPOINT_FORMAT = "nano-gpt-stages/1"
HISTORY_FIELDS = ("step", "train_loss", "val_loss", "elapsed_s")


@dataclasses.dataclass
class Checkpoint:
    """A run at one step: everything --sample needs, and everything --resume needs to go on exactly."""

    stage: str
    config: dict[str, Any]  # the Config's fields by name
    vocab: str  # the tokenizer's characters, sorted: id i is vocab[i]
    step: int
    model: dict[str, torch.Tensor]  # the state_dict
    optimizer: dict[str, Any]
    history: list[dict[str, float]]
    elapsed: float
    rng: dict[str, Any]  # "batches", "eval", "torch", "cuda", "mps": the generators' states
    init_from: dict[str, Any] | None = None  # where the weights came from; None: trained from scratch

    def to_file(self) -> dict[str, Any]:
        """The dict torch.save writes: the fields (not copied, as asdict would copy the tensors) and the format."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"format": CHECKPOINT_FORMAT} | {k: v for k, v in fields.items() if v is not None}


def default_path(stage: str) -> Path:
    return CHECKPOINT_DIR / f"{stage}.pt"


def history_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_suffix(".history.csv")


def previous_path(checkpoint_path: Path) -> Path:
    """Where a fresh run copies the checkpoint it replaces: c.pt -> c.prev.pt."""
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.prev{checkpoint_path.suffix}")


def write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """write(f) into a temporary file beside path, then renamed onto path: a crash leaves the old file whole."""
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


def check_writable_dir(directory: Path, what: str, flag: str) -> None:
    """Create directory if needed and prove a file can be written in it; else one clear error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise UserError(f"cannot write {what} ({e.strerror or e}); choose another place with {flag}") from None


def check_writable(path: Path) -> None:
    """Fail before training, not after it, when the checkpoint cannot be written."""
    if path.is_dir():
        raise UserError(f"--checkpoint {path} is a directory; give a file name such as {path / 'model.pt'}")
    check_writable_dir(path.parent, f"the checkpoint {path}", "--checkpoint")


def write_file(path: Path, saved: dict) -> None:
    write_atomically(path, lambda f: torch.save(saved, f))


def read_file(path: Path, stage: str, flag: str = "--checkpoint") -> dict:
    """The dict in the file at path (named by flag), written by stage; each way it can be wrong is one error."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give the checkpoint file inside it")
    if not path.exists():
        custom = "" if path == default_path(stage) else f" --checkpoint {path}"
        raise UserError(f"no checkpoint at {path}: train first with `python stages/{stage}.py{custom}`")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # the file is there but cannot be read: it may be fine, so never say "delete it"
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except Exception as e:  # damage can fail the unpickler in any way (IndexError, EOFError, ...)
        # torch.save writes a zip archive: weights_only refuses one whose pickle holds more than plain data
        untrusted = (
            isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower() and zipfile.is_zipfile(path)
        )
        said = f"is damaged or not a checkpoint ({first_line(e)})"
        if untrusted:
            said = "holds Python objects beyond tensors and plain data; refusing to unpickle an untrusted file"
        raise UserError(f"{path} {said}. Delete it and train again") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project; delete it or pass another {flag}")
    if saved.get("stage") != stage:  # another stage's model has other layers: its weights fit no model here
        advice = f"run stages/{saved.get('stage')}.py with it, or give this stage its own --checkpoint"
        if flag == "--init_from":
            advice = f"a stage starts only from its own weights: pass a checkpoint that stages/{stage}.py wrote"
        raise UserError(f"{flag} {path} was saved by stage {saved.get('stage')}, not {stage}; {advice}")
    return saved


def load(path: Path, stage: str, flag: str = "--checkpoint") -> Checkpoint:
    """The checkpoint at path, written by stage; a file that lacks a part is damaged: one clear error."""
    saved = read_file(path, stage, flag)
    fields = dataclasses.fields(Checkpoint)
    if missing := [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in saved]:
        raise UserError(
            f"{path} lacks {', '.join(missing)}: it is damaged, or was written by another version of "
            "this project; delete it and train again"
        )
    return Checkpoint(**{f.name: saved[f.name] for f in fields if f.name in saved})


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, path: Path, config: Any, sizes_from_flags=False) -> None:
    """Put a checkpoint's weights into model; a model of another size is one error that names its sizes."""
    own, theirs = model.state_dict(), ckpt.model
    if {k: v.shape for k, v in own.items()} == {k: v.shape for k, v in theirs.items()}:
        model.load_state_dict(theirs)
        return

    def shapes(**values: Any) -> dict | None:  # the model's shapes with these values, built on no memory
        try:
            with torch.device("meta"):
                built = type(model)(len(ckpt.vocab), dataclasses.replace(config, **values))
            return {k: v.shape for k, v in built.state_dict().items()}
        except Exception:  # the Config refuses the mix (n_embd not divisible by n_head), or another class
            return None

    here = dataclasses.asdict(config)
    differ = {k: v for k, v in ckpt.config.items() if k in here and here[k] != v}
    sizes = {k: v for k, v in differ.items() if shapes(**{k: v}) != shapes()}  # those that change a shape
    said = ", ".join(f"{k} {v} there, {here[k]} here" for k, v in sizes.items()) or "other layers"
    advice = "drop the flags that change it to use the checkpoint's, or train afresh"
    if sizes_from_flags and sizes:  # a run from --init_from: its sizes come from its flags
        flags = " ".join(f"--{k} {v}" for k, v in sizes.items())
        advice = f"this run's sizes come from its defaults and flags, not from --init_from: add {flags}"
    raise UserError(f"{path} holds a model of another size ({said}); {advice}")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The loss history as CSV (step, train_loss, val_loss, elapsed_s), written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)  # str(float) round-trips exactly
    write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows write_history wrote; an absent or unreadable file reads as no rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{"step": int(r["step"]), **{k: float(r[k]) for k in HISTORY_FIELDS[1:]}} for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return []
