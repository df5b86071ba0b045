"""Checkpoints: what one holds (the Checkpoint's fields), its file, and the loss history beside it.

On disk a checkpoint is a plain dict of tensors and plain values, since torch.load(...,
weights_only=True), which runs no code from the file, refuses anything else. Every file is written
whole or not at all (write_atomically). Beside each checkpoint goes <stage>.history.csv, its loss
history, for plotting without torch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

import common
from harness.errors import UserError, first_line
from harness.files import check_writable_dir, write_atomically

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
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # the tensors are not copied
        return {"format": CHECKPOINT_FORMAT} | {k: v for k, v in saved.items() if v is not None}


REQUIRED = [f.name for f in dataclasses.fields(Checkpoint) if f.default is dataclasses.MISSING]


def default_path(stage: str) -> Path:
    return CHECKPOINT_DIR / f"{stage}.pt"


def history_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_suffix(".history.csv")


def previous_path(checkpoint_path: Path) -> Path:
    """Where a fresh run copies the checkpoint it replaces: c.pt -> c.prev.pt."""
    return checkpoint_path.with_name(f"{checkpoint_path.stem}.prev{checkpoint_path.suffix}")


def of_run(
    run: Any, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, history, elapsed
) -> Checkpoint:
    """The checkpoint of a run at this step."""
    rng = {
        "batches": run.train_gen.get_state(),
        "eval": run.eval_gen.get_state(),
        "torch": torch.get_rng_state(),  # dropout's random numbers on the CPU ...
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # ... on NVIDIA GPUs
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,  # ... on Apple's
    }
    config = dataclasses.asdict(run.config)
    state = (model.state_dict(), optimizer.state_dict())
    return Checkpoint(run.stage, config, run.tokenizer.chars, step, *state, history, elapsed, rng, run.weights_origin)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, path: Path, config: Any, sizes_from_flags=False) -> None:
    """Put a checkpoint's weights into model; a model of another size is one clear error that names the
    hyperparameters that differ. sizes_from_flags: this run's sizes come from its flags (--init_from),
    so the error says which flags give the checkpoint's; otherwise, to drop the flags that change them."""
    own, theirs = model.state_dict(), ckpt.model
    mismatched = [k for k in own if k not in theirs or theirs[k].shape != own[k].shape]
    mismatched += [k for k in theirs if k not in own]
    if mismatched:
        here = dataclasses.asdict(config)
        differ = {k: v for k, v in ckpt.config.items() if k in here and here[k] != v}
        sizes = sizes_that_differ(model, ckpt, config, differ)
        said = ", ".join(f"{k} {v} there, {here[k]} here" for k, v in (sizes or differ).items()) or "other layers"
        if sizes_from_flags:
            flags = " ".join(as_flag(k, v) for k, v in sizes.items()) if sizes else "the checkpoint's sizes as flags"
            advice = f"this run's sizes come from its defaults and flags, not from --init_from: add {flags}"
        else:
            advice = "drop the flags that change it to use the checkpoint's, or train afresh"
        raise UserError(f"{path} holds a model of another size ({said}; first difference: {mismatched[0]}); {advice}")
    model.load_state_dict(theirs)


def sizes_that_differ(model: torch.nn.Module, ckpt: Checkpoint, config: Any, differ: dict) -> dict | None:
    """Of the hyperparameters that differ, those that change the model's shapes, with the checkpoint's
    values: each found by building the model with it on the meta device, which allocates nothing. None
    when together they do not give the checkpoint's shapes (or the model cannot be rebuilt so)."""

    def shapes_with(values: dict) -> dict | None:
        try:
            with torch.device("meta"):
                built = type(model)(len(ckpt.vocab), dataclasses.replace(config, **values))
            return {k: v.shape for k, v in built.state_dict().items()}
        except Exception:  # the Config refuses the mix (n_embd not divisible by n_head), or another class
            return None

    own = shapes_with({})
    sizes = {k: v for k, v in differ.items() if shapes_with({k: v}) != own}
    theirs = {k: v.shape for k, v in ckpt.model.items()}
    return sizes if own is not None and shapes_with(sizes) == theirs else None


def as_flag(name: str, value: Any) -> str:
    """A hyperparameter as the flag that sets it: --n_embd 16, --lr_decay, --no-lr_decay."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def restore_training(ckpt: Checkpoint, run: Any, optimizer: torch.optim.Optimizer) -> None:
    """--resume: the optimizer's state and every random-number generator, as they were saved."""
    optimizer.load_state_dict(ckpt.optimizer)
    for group in optimizer.param_groups:  # the optimizer's state brings the old rate back:
        group["lr"] = run.config.learning_rate  # --learning_rate (or the checkpoint's) wins
    run.train_gen.set_state(ckpt.rng["batches"])
    run.eval_gen.set_state(ckpt.rng["eval"])
    torch.set_rng_state(ckpt.rng["torch"])
    if torch.cuda.is_available() and len(ckpt.rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(ckpt.rng["cuda"])
    if ckpt.rng.get("mps") is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(ckpt.rng["mps"])


# -- files -------------------------------------------------------------------------------------


def write_file(path: Path, saved: dict) -> None:
    write_atomically(path, lambda f: torch.save(saved, f))


def save(path: Path, ckpt: Checkpoint) -> None:
    write_file(path, ckpt.to_file())


def read_file(path: Path, stage: str, flag: str = "--checkpoint") -> dict:
    """The on-disk dict, loaded with weights_only=True and checked to be this project's, written by
    this stage; every way it can be wrong is one clear error. flag: the option that named path."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give the checkpoint file inside it")
    if not path.exists():
        custom = "" if path == default_path(stage) else f" --checkpoint {path}"
        raise UserError(f"no checkpoint at {path}: train first with `python stages/{stage}.py{custom}`")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # the file is there but cannot be read: it may be fine, so never say "delete it"
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except Exception as e:  # a damaged file can make the unpickler fail in any way (IndexError, EOFError, ...)
        # torch.save writes a zip archive: one whose pickle holds more than plain data is refused as such
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower() and zipfile.is_zipfile(path):
            raise UserError(
                f"{path} holds Python objects beyond tensors and plain data; refusing to unpickle "
                "an untrusted file. Delete it and train again"
            ) from None
        raise UserError(f"{path} is damaged or not a checkpoint ({first_line(e)}); delete it and train again") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint of this project; delete it or pass another {flag}")
    if saved.get("stage") != stage:  # another stage's model has other layers: its weights fit no model here
        other = saved.get("stage")
        advice = f"run stages/{other}.py with it, or give this stage its own --checkpoint"
        if flag == "--init_from":
            advice = f"a stage starts only from its own weights: pass a checkpoint that stages/{stage}.py wrote"
        raise UserError(f"{flag} {path} was saved by stage {other}, not {stage}; {advice}")
    return saved


def load(path: Path, stage: str, flag: str = "--checkpoint") -> Checkpoint:
    """The checkpoint at path, written by stage; a file that lacks a part is damaged: one clear error."""
    saved = read_file(path, stage, flag)
    missing = [name for name in REQUIRED if name not in saved]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)}: it is damaged, or was written by another version of "
            "this project; delete it and train again"
        )
    return Checkpoint(**{f.name: saved[f.name] for f in dataclasses.fields(Checkpoint) if f.name in saved})


def check_writable(path: Path) -> None:
    """Fail before training, not after it, when the checkpoint cannot be written."""
    if path.is_dir():
        raise UserError(f"--checkpoint {path} is a directory; give a file name such as {path / 'model.pt'}")
    check_writable_dir(path.parent, f"the checkpoint {path}", "--checkpoint")


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
