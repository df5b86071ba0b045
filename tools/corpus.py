"""A large English text to pre-train on (exercise 3): Webster's 1913 dictionary, cleaned, with every
part that overlaps tiny Shakespeare removed.

    python tools/corpus.py dict-gcide_0.48.5+nmu2_all.deb     writes data/gcide.txt
    python tools/corpus.py gcide.dict.dz --out PATH            (or the .dict.dz, or it unzipped)

Where to get it. GCIDE, the GNU Collaborative International Dictionary of English, is Webster's
Revised Unabridged Dictionary of 1913 (public domain) with additions from WordNet, under the GPL.
Debian packages it as dict-gcide (https://packages.debian.org/bookworm/dict-gcide):

    apt-get download dict-gcide          on Debian or Ubuntu, into the current folder; elsewhere:
    https://deb.debian.org/debian/pool/main/d/dict-gcide/dict-gcide_0.48.5+nmu2_all.deb

DEB_FILE, DICT_FILE and CLEAN_TEXT below hold the sizes and sha256 measured for that version;
this tool reads the .deb itself (no dpkg needed; or the gcide.dict.dz inside it, or that file
unzipped) and says when what it reads, or writes, is not the file measured.

What it keeps: each entry's headword, part of speech and definitions, its usage notes, synonyms
and quotations, one paragraph of text each, as plain lines. What it drops: pronunciations
(\\A*ban"don\\), the phonetic spellings after them, everything in square brackets (etymologies,
labels such as [Obs.], the source tags [1913 Webster]), the braces around cross-references; the
dictionary's codes for accented letters ([e^], [=a]) become the bare letter. Then a paragraph
that still holds a character outside CHARACTERS is dropped, and the entries are shuffled with a
fixed seed, so that the last 10% that a stage validates on is drawn from the whole alphabet.

The rule against overlap with tiny Shakespeare: both texts are normalised (lower case, every run
of characters that are not letters made one space, so that line breaks, punctuation and capitals
do not hide a quotation) and a paragraph is dropped when it shares a run of WINDOW (30) normalised
characters with tiny Shakespeare, about six words. Besides, every paragraph that quotes
Shakespeare ("--Shak.") is dropped, even where tiny Shakespeare lacks the quotation: a quotation
can be spelled otherwise than the play, and the complete works hold the validation text.

It prints how many paragraphs each rule removes, and how many characters it writes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import random
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402


@dataclass(frozen=True)
class Measured:
    """A file as measured here: its size and its sha256."""

    name: str
    size: int
    sha256: str


DEB_FILE = Measured(
    "dict-gcide_0.48.5+nmu2_all.deb", 14_800_692, "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"
)
DICT_FILE = Measured(  # inside it: usr/share/dictd/gcide.dict.dz, zcat gives 39,952,321 bytes
    "gcide.dict.dz", 13_527_370, "3e6b2cdcbc1b3664c2f1466e3c8e44012e815c4c67fa83fa61f39777cd6e8517"
)
CLEAN_TEXT = Measured(  # what this tool writes from it, with tiny Shakespeare as downloaded
    "gcide.txt", 24_157_031, "95a1dd650c5dd423fcb3d1e7e5317100e8b6f039b43fc2234d09fa47e7dd8089"
)
DEB_URL = "https://deb.debian.org/debian/pool/main/d/dict-gcide/dict-gcide_0.48.5+nmu2_all.deb"
DICT_MEMBER = "usr/share/dictd/gcide.dict.dz"
DEFAULT_OUT = common.ROOT / "data" / "gcide.txt"

WINDOW = 30  # normalised characters: a shared run this long is an overlap
CHARACTERS = frozenset("\n !\"&'(),-.:;?0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz")
SHUFFLE_SEED = 0


# -- the rule: no shared run of WINDOW normalised characters ------------------------------------


def normalise(text: str) -> str:
    """Lower case, every run of characters other than letters one space:
    normalise("O Romeo,\\nRomeo!") is "o romeo romeo "."""
    return re.sub(r"[^a-z]+", " ", text.lower())


# the windows' hashes: a polynomial in the characters' codes, wrapping modulo 2**64
_BASE = np.uint64(1_000_003)


def window_hashes(normalised: str) -> np.ndarray:
    """(max(0, len - WINDOW + 1),) uint64: a hash of every run of WINDOW characters, by start.

    Two runs with the same characters have the same hash; two that differ, the same hash once in
    about 2**64 pairs, which at worst drops one paragraph too many."""
    codes = np.frombuffer(normalised.encode("ascii", "replace"), dtype=np.uint8).astype(np.uint64)
    count = len(codes) - WINDOW + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    for j in range(WINDOW):  # h = c0 * B**(W-1) + c1 * B**(W-2) + ... + c(W-1), vectorised over starts
        hashes *= _BASE
        hashes += codes[j : j + count]
    return hashes


_TOP = 24  # the bits of a hash that index the bitmap below
_SHIFT = np.uint64(64 - _TOP)


def found_in(hashes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(len(hashes),) bool: whether each hash is in reference (sorted, distinct).

    np.isin sorts both arrays; with tens of millions of hashes a bitmap of the reference's top
    bits is 15 times faster: only the few hashes it lets through are looked up exactly."""
    bitmap = np.zeros(1 << _TOP, dtype=bool)
    bitmap[reference >> _SHIFT] = True
    maybe = np.flatnonzero(bitmap[hashes >> _SHIFT])
    found = np.zeros(len(hashes), dtype=bool)
    if len(reference):
        at = np.minimum(np.searchsorted(reference, hashes[maybe]), len(reference) - 1)
        found[maybe] = reference[at] == hashes[maybe]
    return found


def reference_windows(text: str) -> np.ndarray:
    """The sorted, distinct hashes of every run of WINDOW normalised characters of text."""
    return np.unique(window_hashes(normalise(text)))


def overlapping(paragraphs: list[str], reference: np.ndarray, chunk: int = 4_000_000) -> list[bool]:
    """Which paragraphs share a run of WINDOW normalised characters with the text whose
    reference_windows() reference is. A run never spans two paragraphs."""
    flags = []
    start = 0
    while start < len(paragraphs):
        stop, size = start, 0
        while stop < len(paragraphs) and (size < chunk or stop == start):
            size += len(paragraphs[stop]) + 1
            stop += 1
        flags += matching(paragraphs[start:stop], reference)
        start = stop
    return flags


def matching(paragraphs: list[str], reference: np.ndarray) -> list[bool]:
    """Which paragraphs have a run in reference, all paragraphs hashed in one pass."""
    normalised = [normalise(p) for p in paragraphs]
    joined = "\n".join(normalised)  # "\n" is no normalised character: a run across it is none
    hashes = window_hashes(joined)
    codes = np.frombuffer(joined.encode("ascii", "replace"), dtype=np.uint8)
    breaks = np.concatenate(([0], np.cumsum(codes == ord("\n"))))  # (len + 1,) breaks before each position
    within = breaks[WINDOW : WINDOW + len(hashes)] == breaks[: len(hashes)]  # the run holds no "\n"
    found = np.flatnonzero(found_in(hashes, reference) & within)
    starts = np.cumsum([0] + [len(n) + 1 for n in normalised[:-1]])  # where each paragraph begins
    flags = np.zeros(len(paragraphs), dtype=bool)
    flags[np.searchsorted(starts, found, side="right") - 1] = True
    return flags.tolist()


def shared_runs(text: str, reference: np.ndarray) -> list[str]:
    """The distinct runs of WINDOW normalised characters of text that are in reference, in the
    order they first occur."""
    normalised = normalise(text)
    hashes = window_hashes(normalised)
    found = np.flatnonzero(found_in(hashes, reference))
    runs = dict.fromkeys(normalised[i : i + WINDOW] for i in found)
    return list(runs)


# -- reading the dictionary ---------------------------------------------------------------------


def read_source(path: Path) -> tuple[str, str]:
    """The dictionary's text, and the sha256 of the .dict.dz it came from (or of path itself)."""
    raw = path.read_bytes()
    if raw.startswith(b"!<arch>\n"):  # a .deb: an ar archive holding data.tar.xz
        raw = dict_from_deb(raw, path)
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":  # gzip (dictzip is gzip with an index)
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace"), digest


def dict_from_deb(raw: bytes, path: Path) -> bytes:
    """The .dict.dz inside a Debian package: ar members, the data one an xz-compressed tar."""
    at = 8
    while at + 60 <= len(raw):
        header = raw[at : at + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        body = raw[at + 60 : at + 60 + size]
        if name.startswith("data.tar"):
            data = lzma.decompress(body) if name.endswith(".xz") else body
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == DICT_MEMBER:
                        return tar.extractfile(member).read()
            break
        at += 60 + size + size % 2  # members are aligned to 2 bytes
    raise harness.UserError(f"{path} holds no {DICT_MEMBER}: give the dict-gcide package or its .dict.dz")


DICTD_HEADER = "00-database-short"  # the first entry of every dictd file: the dictionary's name
HEADWORD = re.compile(r"^[^\s\\][^\\\n]*\\[^\\\n]+\\")  # "Abandon \A*ban"don\ ..." at the line's start
PRONUNCIATION = re.compile(r"\\[^\\]{0,200}\\")  # \A*ban"don\, sometimes over two lines
PHONETIC = re.compile(r"\([^()]*[*\"`#][^()]*\)")  # (ab*an"dun), (#; 277): spellings of sounds
# the dictionary's codes for letters with accents and for ligatures: [e^], [=a], [~n], ['e], [ae]
ACCENT = re.compile(r"\[(?:[=.'~\"^`,*-]([A-Za-z]{1,2})|([A-Za-z]{1,2})\^|(ae|oe|AE|OE))\]")
NAMED = {"[imac]": "i", "[aum]": "a", "[add]": "a", "[udd]": "u", "[asl]": "a", "[eth]": "th", "[thorn]": "th"}
SYLLABLES = re.compile(r"(?<=[A-Za-z])[*`\"]+(?=[A-Za-z])")  # A`ble-mind"ed*ness: a word's stress marks
SHAKESPEARE = re.compile(r"--\s*Shak")  # a quotation's attribution: "--Shak."


def entries(text: str) -> list[str]:
    """The dictionary's entries, each as written: from one headword line to the next."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if HEADWORD.match(line)]  # the first comes after the preface
    if not starts:
        raise harness.UserError('no dictionary entry (a line such as "Abandon \\A*ban"don\\, v. t.")')
    return ["\n".join(lines[start:end]) for start, end in zip(starts, [*starts[1:], len(lines)], strict=True)]


def without_brackets(text: str) -> str:
    """text without anything in square brackets, nested brackets included."""
    while True:
        shorter = re.sub(r"\[[^\[\]]*\]", "", text)
        if shorter == text:
            return shorter.replace("[", "").replace("]", "")
        text = shorter


def clean_paragraph(paragraph: str) -> str:
    """One paragraph of an entry as plain lines of text ("" when nothing is left)."""
    text = PRONUNCIATION.sub("", paragraph)
    text = PHONETIC.sub("", text)
    text = ACCENT.sub(lambda m: next(g for g in m.groups() if g), text)
    for code, letters in NAMED.items():
        text = text.replace(code, letters)
    text = SYLLABLES.sub("", text)
    text = without_brackets(text)
    text = text.replace("{", "").replace("}", "")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    lines = [re.sub(r" ([,.;:])", r"\1", line) for line in lines if line]  # "word ," left by a removal
    return "\n".join(lines)


def paragraphs_of(entry: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", entry) if p.strip()]


@dataclass
class Removed:
    """What cleaning dropped: paragraphs and their characters, by reason."""

    paragraphs: int = 0
    characters: int = 0

    def add(self, paragraph: str) -> None:
        self.paragraphs += 1
        self.characters += len(paragraph) + 1


def build(text: str, shakespeare: str) -> tuple[str, dict[str, Removed]]:
    """The cleaned text, and what each rule removed (each paragraph counted under the first rule
    that removes it)."""
    removed = {
        "a character outside CHARACTERS": Removed(),
        f"a run of {WINDOW} characters shared with tiny Shakespeare": Removed(),
        "a quotation of Shakespeare (--Shak.)": Removed(),
    }
    by_characters, by_overlap, by_quotation = removed.values()
    kept_entries: list[list[str]] = []
    for entry in entries(text):
        kept = []
        for paragraph in map(clean_paragraph, paragraphs_of(entry)):
            if set(paragraph) - CHARACTERS:
                by_characters.add(paragraph)
            elif paragraph:
                kept.append(paragraph)
        kept_entries.append(kept)
    overlaps = iter(overlapping([p for kept in kept_entries for p in kept], reference_windows(shakespeare)))
    chosen = []
    for kept in kept_entries:
        paragraphs = []
        for paragraph in kept:
            if next(overlaps):
                by_overlap.add(paragraph)
            elif SHAKESPEARE.search(paragraph):
                by_quotation.add(paragraph)
            else:
                paragraphs.append(paragraph)
        if paragraphs:
            chosen.append("\n".join(paragraphs))
    random.Random(SHUFFLE_SEED).shuffle(chosen)
    return "\n\n".join(chosen) + "\n", removed


def corpus_main(argv: list[str] | None) -> None:
    parser = harness.cli.Parser(prog="python tools/corpus.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help=f"{DEB_FILE.name}, or the {DICT_FILE.name} inside it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the text goes (default: %(default)s)")
    parser.add_argument(
        "--shakespeare", type=Path, default=None, metavar="PATH", help="the text to remove (default: tiny Shakespeare)"
    )
    args = parser.parse_args(argv)
    if not args.source.is_file():
        raise harness.UserError(
            f"{args.source}: no such file; get it with apt-get download dict-gcide (Debian, Ubuntu), or from {DEB_URL}"
        )
    try:
        text, digest = read_source(args.source)
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError, ValueError) as e:
        raise harness.UserError(
            f"cannot read {args.source} ({e}): give {DEB_FILE.name} or its {DICT_FILE.name}"
        ) from None
    same = (
        f"{DICT_FILE.name}, sha256 as measured" if digest == DICT_FILE.sha256 else f"not the {DICT_FILE.name} measured"
    )
    if DICTD_HEADER not in text[:1000]:  # before anything is written: a good --out stays as it is
        kept = f"; {args.out} is left as it was" if args.out.exists() else ""
        raise harness.UserError(
            f"{args.source} is not the dictionary (no '{DICTD_HEADER}' line at its start, as dictd files "
            f"have): give {DEB_FILE.name} or the {DICT_FILE.name} inside it{kept}"
        )
    print(f"read {args.source}: {len(text):,} characters ({same})")
    shakespeare, where = harness.cli.load_text(args.shakespeare)
    try:
        cleaned, removed = build(text, shakespeare)
    except harness.UserError as e:
        raise harness.UserError(f"{args.source} holds {e}") from None
    for why, r in removed.items():
        print(f"removed {r.paragraphs:,} paragraphs ({r.characters:,} characters) for {why}")
    data = cleaned.encode("utf-8")
    try:
        harness.checkpoints.write_atomically(args.out, lambda f: f.write(data))
    except OSError as e:
        raise harness.UserError(
            f"cannot write {args.out} ({e.strerror or e}); choose another place with --out"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    print(
        f"wrote {args.out}: {len(cleaned):,} characters ({len(cleaned) / len(shakespeare):.0f} times {where.name}), "
        f"{len(set(cleaned))} distinct, sha256 {digest}"
        + (" (the text measured here)" if digest == CLEAN_TEXT.sha256 else "")
    )


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(corpus_main, argv)


if __name__ == "__main__":
    sys.exit(main())
