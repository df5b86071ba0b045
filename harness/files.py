"""Files: the training text (downloaded once, checked before it is read), and writing any file
whole or not at all."""

from __future__ import annotations

import codecs
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import common
from harness.errors import UserError

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_BYTES, DATA_MD5 = 1_115_394, "6fb458f1232090904fb40fe944165e91"  # tiny Shakespeare's size and checksum


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


def download(url: str, dest: Path, size: int = DATA_BYTES, md5: str = DATA_MD5) -> None:
    """Download url to dest through write_atomically, which moves it into place only once its size
    and md5 are verified: a failed or interrupted download never leaves half a file behind."""

    def fetch_and_verify(out: BinaryIO) -> None:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # timeouts, resets, cut-off replies
            raise UserError(
                f"could not download the text from {url} ({getattr(e, 'reason', e)}); "
                f"put a copy of tiny Shakespeare at {dest}, or train on your own file with --data PATH"
            ) from None
        if len(body) != size or hashlib.md5(body).hexdigest() != md5:
            raise UserError(
                f"the download from {url} is not the expected file ({len(body):,} bytes; expected {size:,} bytes, "
                f"md5 {md5}); nothing was saved. Try again, or put the file at {dest}"
            )
        out.write(body)

    try:
        write_atomically(dest, fetch_and_verify)
    except OSError as e:  # the download's own errors are UserErrors by now: this is the folder
        raise UserError(
            f"cannot write into {dest.parent} ({e.strerror or e}); put the text there yourself, or use --data PATH"
        ) from None


def read_text(path: Path, flag: str = "--data") -> str:
    """common.read_text(path), after one clear error for each way the file can be unusable."""
    named = f"{flag} {path}" if flag else str(path)  # as the user gave it, or the default path
    if not path.is_file():
        what = " is a directory" if path.is_dir() else ": no such file"
        raise UserError(f"{named}{what}; give the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not raw:
        raise UserError(f"{path} is empty; give a UTF-8 text file with at least a few thousand characters")
    # UTF-32's marks first: UTF-32 LE's begins with UTF-16 LE's (what PowerShell 5's `>` writes)
    wide = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32")]
    for bom, encoding in [*wide, (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")]:
        if raw.startswith(bom):
            raise UserError(
                f"{path} is {encoding} text; convert it to UTF-8 first (for example: iconv -f {encoding} -t UTF-8)"
            )
    if b"\x00" in raw:
        raise UserError(f"{path} looks like a binary file (it contains NUL bytes); give a UTF-8 text file")
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # Notepad's mark is no character
    try:
        raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start  # the offset in the file, mark included
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{raw[at]:02x} at offset {at}); convert it to UTF-8 (with iconv, say)"
        ) from None
    return common.read_text(path)


def load_text(data: Path | None) -> tuple[str, Path]:
    """The training text and where it came from: --data when given, else tiny Shakespeare, downloaded on first use."""
    if data is not None:
        return read_text(data), data
    if not common.DATA_PATH.exists():
        print(f"{common.DATA_PATH} not found: downloading tiny Shakespeare (1.1 MB) once")
        download(DATA_URL, common.DATA_PATH)
    return read_text(common.DATA_PATH, flag=""), common.DATA_PATH
