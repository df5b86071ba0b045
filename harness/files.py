"""Writing files safely: whole or not at all, and finding out before a long run that a place is writable."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from harness.errors import UserError


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


def check_writable_dir(directory: Path, what: str, flag: str) -> None:
    """Create directory if needed and prove a file can be written in it; else one clear error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} ({e.strerror or e}); choose another place with {flag}") from None
