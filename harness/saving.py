"""Saving a run as it trains: the checkpoint and its loss history, never at the cost of a good file."""

from __future__ import annotations

import shutil
from typing import Any

import torch
from tqdm import tqdm

from harness import checkpoints, snapshot
from harness.errors import UserError
from harness.history import history_path, write_history


class Saver:
    """Writes a run's checkpoint and history; knows which step the file on disk holds."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.saved_step: int | None = None  # the step of the checkpoint on disk, written by this run

    def non_finite(self, what: str) -> UserError:
        """The error for a nan or inf: says which checkpoint is kept, and what to do."""
        path = self.run.checkpoint_path
        kept = f"{path} (step {self.saved_step}) is kept" if self.saved_step is not None else "nothing was saved"
        return UserError(f"{what}; training stopped and {kept}. Lower --learning_rate and train again")

    def save(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, history: list, elapsed: float
    ) -> None:
        run = self.run
        if not all(torch.isfinite(p).all() for p in model.parameters()):  # never overwrite a good file with nan
            raise self.non_finite(f"the weights hold nan or inf at step {step}")
        payload = snapshot.take(run, model, optimizer, step, history, elapsed)
        try:
            if self.saved_step is None and not run.args.resume and run.checkpoint_path.exists():
                self._keep_previous()
            checkpoints.save_checkpoint(run.checkpoint_path, payload)
            write_history(history_path(run.checkpoint_path), history)
        except OSError as e:  # disk full, permissions changed mid-run: write_atomically never leaves half a file
            raise UserError(
                f"could not save the checkpoint ({e.strerror or e}: {e.filename or run.checkpoint_path}); "
                "what is on disk "
                "is the last one written whole. Free some space or pass another --checkpoint"
            ) from None
        self.saved_step = step

    def _keep_previous(self) -> None:
        """A fresh run is about to replace a checkpoint from an earlier run: copy it (and its history) aside.

        A copy, not a move: until the new checkpoint is written whole, the old one stays where it was.
        """
        path = self.run.checkpoint_path
        prev = path.with_name(f"{path.stem}.prev{path.suffix}")
        shutil.copy2(path, prev)
        if history_path(path).exists():
            shutil.copy2(history_path(path), history_path(prev))
        tqdm.write(
            f"copied the earlier run's checkpoint to {prev} before replacing it (--resume continues a run instead)"
        )
