"""Exercise 6's checks: the learner's vocabulary, template, batch and answer, each judged by what it
does, never by how it is written. Another mark, another padding id, a mask built another way pass.

The vocabulary is tiny Shakespeare's 65 characters, '$' among them. The batches are of a few pairs
of different lengths, so that the shorter rows are padded. The answers come from a scripted model:
stage 10's, with a forward pass that makes the template's next id the most likely, but by so little
that a sampled answer goes astray.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from exercises import finetuning, learner_stage
from exercises.checks import Check, Failed

NAME = "ex6_finetune"
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's
PAIRS = [  # (prompt, answer) of different lengths: the shorter rows are padded
    ("Sweet Juliet, I lvoe thee", "Sweet Juliet, I love thee"),
    ("Good mlrrow.", "Good morrow."),
    ("What, ho! Apotheacry!", "What, ho! Apothecary!"),
]
BLOCK_SIZE = 64  # the cpu preset's
IGNORE = finetuning.IGNORE


def part(module: ModuleType, name: str):
    """The learner's function called name; a missing one is a finding, not a crash."""
    if not callable(getattr(module, name, None)):
        raise Failed(f"the file has no {name}(): keep the names the exercise gives them")
    return getattr(module, name)


def vocab_of(module: ModuleType) -> list[str]:
    vocab = part(module, "vocabulary")(CHARS)
    if not isinstance(vocab, list | tuple) or not all(isinstance(t, str) for t in vocab):
        raise Failed(f"vocabulary() returned a {type(vocab).__name__}: return a list of str, one for each token")
    return list(vocab)


def marks_of(vocab: list[str]) -> list[str]:
    return [t for t in vocab if t not in set(CHARS)]  # a set: "ab" is no character of the text


def vocabulary(module: ModuleType) -> str:
    vocab = vocab_of(module)
    missing = [ch for ch in CHARS if ch not in vocab]
    if missing:
        raise Failed(
            f"vocabulary() lacks {len(missing)} of the characters, e.g. {missing[0]!r}: keep every character "
            "of chars, as the prompts and answers use them"
        )
    twice = sorted({t for t in vocab if vocab.count(t) > 1})
    if twice:
        raise Failed(
            f"{twice[0]!r} is in the vocabulary twice: a token that means two things; a mark must be a token of its own"
        )
    marks = marks_of(vocab)
    if not marks:
        raise Failed(
            "vocabulary() is the characters alone: add the template's marks as tokens of their own. A character "
            "the text uses, such as '$', would mean both itself and 'the answer comes next'"
        )
    return f"the {len(CHARS)} characters and {len(marks)} mark(s) of its own: {', '.join(map(repr, marks))}"


def ids_of(module: ModuleType, prompt: str, answer: str | None, vocab: list[str]) -> list[int]:
    ids = part(module, "template")(prompt, answer, vocab)
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    if not isinstance(ids, list | tuple) or not all(isinstance(i, int) for i in ids):
        raise Failed(f"template() returned a {type(ids).__name__}: return a list of int, the ids")
    bad = [i for i in ids if not 0 <= i < len(vocab)]
    if bad:
        raise Failed(f"template() wrote id {bad[0]}, outside the vocabulary (ids 0 to {len(vocab) - 1})")
    return list(ids)


def shown(tokens: list[str]) -> str:
    return "".join(t if t in CHARS else f"[{t}]" for t in tokens)


def template(module: ModuleType) -> str:
    vocab = vocab_of(module)
    for prompt, answer in PAIRS:
        whole = ids_of(module, prompt, answer, vocab)
        before = ids_of(module, prompt, None, vocab)
        read = [vocab[i] for i in before]
        if whole[: len(before)] != before:
            raise Failed(
                "template(prompt, None) is not the start of template(prompt, answer): the model must read the "
                "same ids before it answers as it read in training"
            )
        spelt = "".join(t for t in read if t in CHARS)
        if spelt != prompt:
            borrowed = spelt.replace(prompt, "", 1) if prompt in spelt else None
            if borrowed:
                raise Failed(
                    f"the template borrows {borrowed!r} from the text as a mark ({shown(read)!r}): a character the "
                    "text uses would mean two things; use marks of their own, from vocabulary()"
                )
            raise Failed(f"template({prompt!r}, None) holds the characters {spelt!r}, not the prompt's")
        if read[-1] in CHARS:
            raise Failed(
                f"template(prompt, None) ends on a character ({shown(read)!r}): end it with a mark, so that the "
                "model knows where the prompt stops and its answer begins"
            )
        rest = [vocab[i] for i in whole[len(before) :]]
        if rest[: len(answer)] != list(answer):
            raise Failed(f"after template(prompt, None) come {shown(rest)!r}, not the answer's characters ({answer!r})")
        if len(rest) == len(answer):
            raise Failed("no end mark after the answer: the model could never say that it is done; add a mark after it")
        if rest[len(answer)] in CHARS or len(rest) > len(answer) + 1:
            raise Failed(
                f"after the answer come {shown(rest[len(answer) :])!r}: one end mark, a token of its own, "
                "and nothing more"
            )
    prompt, answer = PAIRS[1]
    return f"{prompt!r} and {answer!r} as {shown([vocab[i] for i in ids_of(module, prompt, answer, vocab)])!r}"


def batch(module: ModuleType) -> str:
    vocab = vocab_of(module)
    got = part(module, "batch")(PAIRS, vocab, BLOCK_SIZE)
    if not (isinstance(got, tuple | list) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        raise Failed("batch() must return two tensors, the inputs x and the targets y")
    x, y = got
    longest = max(len(ids_of(module, p, a, vocab)) for p, a in PAIRS)
    if x.dim() != 2 or x.shape != y.shape or len(x) != len(PAIRS):
        raise Failed(
            f"x is {tuple(x.shape)} and y {tuple(y.shape)}: both must be (B, T), one row for each of the "
            f"{len(PAIRS)} pairs"
        )
    if x.dtype != torch.long or y.dtype != torch.long:
        raise Failed(f"x is {x.dtype} and y {y.dtype}: both must be torch.long, ids for the embedding and the loss")
    if not longest - 1 <= x.shape[1] <= BLOCK_SIZE:
        raise Failed(
            f"T is {x.shape[1]}: the longest pair has {longest} ids, so T is {longest - 1} or more, and at most "
            f"block_size ({BLOCK_SIZE})"
        )
    if not 0 <= int(x.min()) <= int(x.max()) < len(vocab):
        raise Failed(
            f"x holds the id {int(x.min()) if x.min() < 0 else int(x.max())}, which no token has: pad x with an id of "
            f"the vocabulary (0 to {len(vocab) - 1}), as the embedding reads every position; only y takes IGNORE"
        )
    for b, (prompt, answer) in enumerate(PAIRS):
        whole = ids_of(module, prompt, answer, vocab)
        n, start = len(whole), len(ids_of(module, prompt, None, vocab)) - 1  # start: the mark's position
        if x[b, : n - 1].tolist() != whole[:-1]:
            raise Failed(
                f"row {b} of x is not pair {b}'s template (but its last id) from position 0: pad after the "
                "sequence, as stage 10 has no attention mask to hide padding in front"
            )
        counted = [t for t in range(x.shape[1]) if y[b, t] != IGNORE]
        values = [int(y[b, t]) for t in counted]
        if values != [whole[t + 1] if t + 1 < n else None for t in counted]:
            for d in (-1, 1, -2, 2):
                if all(0 <= t + 1 + d < n and v == whole[t + 1 + d] for t, v in zip(counted, values, strict=True)):
                    raise Failed(
                        f"the answer shifted by {abs(d)}: in row {b} the target at position t is the id at "
                        f"t{1 + d:+d}, not at t+1; y[b, t] must be the id that follows x[b, t]"
                    )
            late = [t for t in counted if t >= n - 1]
            if late:
                raise Failed(
                    f"padding counted: row {b} counts {len(late)} target(s) after its end mark; set the padding's "
                    "targets to IGNORE, or the model learns to write padding"
                )
            raise Failed(f"in row {b} the targets are not the ids that follow the inputs: y[b, t] is x[b, t + 1]")
        early = [t for t in counted if t < start]
        if early:
            raise Failed(
                f"the prompt left in the loss: row {b} counts {len(early)} target(s) before the answer; set "
                "them to IGNORE: the model should learn to answer, not to write prompts"
            )
        if n - 2 not in counted:
            raise Failed(
                f"the end mark not learned: row {b}'s target after the answer's last character is IGNORE; count "
                "it, or the model never learns to stop"
            )
        if counted != list(range(start, n - 1)):
            missing = sorted(set(range(start, n - 1)) - set(counted))
            raise Failed(
                f"row {b} leaves {len(missing)} of the answer's targets out of the loss, the first at position "
                f"{missing[0]}: count every character of the answer, from the one after the mark"
            )
    return f"{tuple(x.shape)}: the answers and their end marks counted, the prompts and the padding IGNORE"


@functools.cache
def stage_10() -> ModuleType:
    return learner_stage.stage_10_with(None)


def scripted_model(vocab: list[str], script, block_size: int):
    """Stage 10's model whose next id after ids is script(ids): the most likely, by a hair."""

    class Scripted(stage_10().LanguageModel):
        calls = 0

        def forward(self, idx, targets=None):
            Scripted.calls += 1
            B, T = idx.shape
            if T > block_size:
                raise Failed(
                    f"answer() gave the model {T} ids, more than block_size ({block_size}): its position table "
                    "has no more rows; stop there"
                )
            if Scripted.calls > 4 * block_size:
                raise Failed(
                    "answer() goes on past the end mark: stop there, or when the model has read block_size ids"
                )
            logits = torch.full((B, T, len(vocab)), 0.95)
            for b, row in enumerate(idx.tolist()):
                for t in range(T):
                    logits[b, t, script(row[: t + 1])] = 1.0
            return logits, None

    cfg = stage_10().Config(block_size=block_size, n_embd=8, n_head=1, n_layer=1, dropout=0.0)
    return Scripted(len(vocab), cfg).eval()


def answer(module: ModuleType) -> str:
    vocab = vocab_of(module)
    stray = vocab.index("Q")  # what the script writes where the template has nothing to say

    for prompt, right in PAIRS:
        whole = ids_of(module, prompt, right, vocab)
        before = ids_of(module, prompt, None, vocab)

        def script(ids: list[int], whole=whole) -> int:
            return whole[len(ids)] if ids == whole[: len(ids)] and len(ids) < len(whole) else stray

        got = [part(module, "answer")(scripted_model(vocab, script, BLOCK_SIZE), prompt, vocab) for _ in range(2)]
        if got[0] != got[1]:
            raise Failed(
                f"two answers to the same prompt differ ({got[0]!r}, {got[1]!r}): the answer is sampled; take "
                "the most likely token at each step (the argmax: greedy)"
            )
        said = got[0]
        if not isinstance(said, str):
            raise Failed(f"answer() returned a {type(said).__name__}: return the answer's characters as a str")
        if said == right:
            continue
        marks = [m for m in marks_of(vocab) if m in said]
        if said.startswith(right) and said not in (right + m for m in marks):
            raise Failed(f"the answer goes on past the end mark ({said!r}): stop when the model writes the end mark")
        if marks:
            raise Failed(f"the answer {said!r} holds the mark {marks[0]!r}: return the answer's characters alone")
        if said and set(said) == {"Q"}:
            raise Failed(
                f"the model was not given template(prompt, None), {shown([vocab[i] for i in before])!r}: it "
                "answers after the prompt and its mark, as in training"
            )
        raise Failed(f"answer() returned {said!r}; the model wrote {right!r} and then the end mark")

    prompt, right = PAIRS[0]
    room = BLOCK_SIZE - len(ids_of(module, prompt, None, vocab))
    before = len(ids_of(module, prompt, None, vocab))

    def never_ends(ids: list[int]) -> int:  # the answer, then letters: never the end mark
        return vocab.index((right + "x" * BLOCK_SIZE)[len(ids) - before])

    said = part(module, "answer")(scripted_model(vocab, never_ends, BLOCK_SIZE), prompt, vocab)
    if not isinstance(said, str) or len(said) < room:
        written = len(said) if isinstance(said, str) else 0
        raise Failed(
            f"with no end mark, answer() stopped after {written} characters, before the model had read "
            f"block_size ids ({room} characters after the prompt): go on up to block_size"
        )
    return "greedy, after template(prompt, None), up to the end mark; without one, up to block_size"


VOCABULARY = "the vocabulary: every character, and marks of its own"
TEMPLATE = "the template: prompt, mark, answer, end mark"
TARGETS = "the batch: the answer and its end mark counted, nothing else"
ANSWER = "the answer: greedy, up to the end mark, within block_size"


def checks() -> list[Check]:
    """Exercise 6's checks, in order."""
    return [
        Check(VOCABULARY, vocabulary),
        Check(TEMPLATE, template, needs=(VOCABULARY,)),
        Check(TARGETS, batch, needs=(VOCABULARY, TEMPLATE)),
        Check(ANSWER, answer, needs=(VOCABULARY, TEMPLATE)),
    ]
