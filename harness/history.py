"""The loss history beside each checkpoint: <stage>.history.csv, one row per loss estimate."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from harness.checkpoints import write_atomically

HISTORY_FIELDS = ("step", "train_loss", "val_loss", "elapsed_s")


def history_path(checkpoint_path: Path) -> Path:
    return checkpoint_path.with_suffix(".history.csv")


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """The loss history as CSV (step, train_loss, val_loss, elapsed_s), written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in HISTORY_FIELDS})  # str(float) round-trips exactly
    write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows write_history wrote; an absent or unreadable file reads as no rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{"step": int(r["step"]), **{k: float(r[k]) for k in HISTORY_FIELDS[1:]}} for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError):
        return []
