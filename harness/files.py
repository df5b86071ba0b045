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

from tqdm import tqdm

import common
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


DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_BYTES = 1_115_394  # tiny Shakespeare: 65 distinct characters, 1,003,854 train / 111,540 val
DATA_MD5 = "6fb458f1232090904fb40fe944165e91"
DOWNLOAD_TIMEOUT_S = 30


def download(url: str, dest: Path, size: int = DATA_BYTES, md5: str = DATA_MD5) -> None:
    """Download url to dest, verify its size and md5, and only then move it into place.

    write_atomically puts the bytes in a temporary file beside dest and renames it onto dest only
    once the download is verified, so an interrupted or failed one never leaves half a dest behind.
    """

    def fetch_and_verify(out: BinaryIO) -> None:
        digest = hashlib.md5()
        got = 0
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                bar = tqdm(
                    total=size, unit="B", unit_scale=True, desc=f"downloading {dest.name}", leave=False, disable=None
                )
                with bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        digest.update(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # timeouts, resets, cut-off replies
            reason = getattr(e, "reason", e)
            raise UserError(
                f"could not download the text from {url} ({reason}); "
                f"put a copy of tiny Shakespeare at {dest}, or train on your own file with --data PATH"
            ) from None
        if got != size or digest.hexdigest() != md5:
            raise UserError(
                f"the download from {url} is not the expected file ({got:,} bytes, md5 {digest.hexdigest()}; "
                f"expected {size:,} bytes, md5 {md5}); nothing was saved. Try again, or put the file at {dest}"
            )

    try:
        write_atomically(dest, fetch_and_verify)
    except OSError as e:  # the download's own errors are UserErrors by now: this is the folder
        raise UserError(
            f"cannot write into {dest.parent} ({e.strerror or e}); put the text there yourself, or use --data PATH"
        ) from None


_WIDE_ENCODINGS = (  # UTF-32's marks first: UTF-32 LE's begins with UTF-16 LE's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),  # what PowerShell 5's `>` writes
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_text(path: Path, flag: str = "--data") -> str:
    """common.read_text(path), after one clear error for each way the file can be unusable."""
    named = f"{flag} {path}" if flag else str(path)  # as the user gave it, or the default path
    if path.is_dir():
        raise UserError(f"{named} is a directory; give the path of a UTF-8 text file")
    if not path.exists():
        raise UserError(f"{named}: no such file; give the path of a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not raw:
        raise UserError(f"{path} is empty; give a UTF-8 text file with at least a few thousand characters")
    for bom, encoding in _WIDE_ENCODINGS:
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
            f"{path} is not UTF-8 text (byte 0x{raw[at]:02x} at offset {at}); "
            "convert it to UTF-8 first (for example with iconv)"
        ) from None
    return common.read_text(path)


def load_text(data: Path | None) -> tuple[str, Path]:
    """The training text and where it came from: --data when given, else common.DATA_PATH,
    downloaded on first use."""
    if data is not None:
        return read_text(data), data
    if not common.DATA_PATH.exists():
        print(f"{common.DATA_PATH} not found: downloading tiny Shakespeare (1.1 MB) once")
        download(DATA_URL, common.DATA_PATH)
    return read_text(common.DATA_PATH, flag=""), common.DATA_PATH
