"""Exercise 6, worked: fine-tune stage 10 to do a task, and see what pre-training bought.

A solution of exercises/ex6_finetune.py (diff the two to see what was written). Run it as the
exercise: python exercises/solutions/ex6_finetune.py [flags], into checkpoints of its own.

The lecture ends on how a document completer becomes an assistant: the same network, fine-tuned
on prompts and answers written in a template, with the loss counted on the answers alone. Here the
task is to fix one typo in a line of Shakespeare:

    prompt  "Sirrah, lead these genalemen"   two neighbouring letters swapped, or one replaced
    answer  "Sirrah, lead these gentlemen"   the whole line, corrected

The program around this file (exercises/finetuning.py) takes stage 10's pre-trained model
(checkpoints/10_gpt.pt, from python stages/10_gpt.py --preset cpu), fine-tunes it on pairs from
the training split, and trains the same model from scratch on the same pairs. Then it judges both,
and the pre-trained model not fine-tuned, on pairs from the validation split. Write the four
parts marked WRITE THIS:

  vocabulary()  the characters, and the template's marks: tokens of their own
  template()    how a prompt and its answer become one sequence of ids
  batch()       inputs and targets: the answer and its end mark count, nothing else
  answer()      the greedy answer after the prompt, up to the end mark

Check it:   python exercises/check.py 6           each part, judged by what it does
Run it:     python exercises/ex6_finetune.py      one seed: two training runs, three models judged
            python exercises/ex6_finetune.py --seeds 5      the noise too
            python exercises/ex6_finetune.py --ask "Sweet Juliet, I lvoe thee"   after a run
Its checks: python exercises/check.py 6 --file exercises/solutions/ex6_finetune.py
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the project root
sys.path.insert(0, str(ROOT))
# IGNORE: the target the loss skips (F.cross_entropy's default ignore_index, -100)
from exercises.finetuning import IGNORE, finetune_and_compare  # noqa: E402

ANSWER, END = "<answer>", "<end>"  # two tokens no text has: each name is more than one character


def vocabulary(chars: str) -> list[str]:
    """The tokens that fine-tuning reads and writes, id i being vocabulary(chars)[i]: every
    character of chars, the pre-trained model's (id i is chars[i] there), and the template's marks.

    A mark is a token of its own, never a character the text uses: a '$' of the text would then
    mean two things. The program gives each new token a fresh row of the token embedding and of
    the head, as exercise 3 does for a character its pre-training text never had.
    """
    return [*chars, ANSWER, END]


def template(prompt: str, answer: str | None, vocab: list[str]) -> list[int]:
    """The ids of one pair in the template: the prompt's characters, a mark that says the answer
    comes next, the answer's characters, an end mark.

    template(prompt, None, vocab) is what the model reads before it answers: the same ids up to
    where the answer begins. The answer then continues it.
    """
    ids = {token: i for i, token in enumerate(vocab)}
    before = [ids[ch] for ch in prompt] + [ids[ANSWER]]
    return before if answer is None else before + [ids[ch] for ch in answer] + [ids[END]]


def batch(
    pairs: list[tuple[str, str]], vocab: list[str], block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs x and targets y, both (B, T) of dtype long, of B (prompt, answer) pairs.

    Row b is pair b's template, its inputs the sequence but its last id, its targets the sequence
    shifted by one: y[b, t] is the id that follows x[b, t]. A target counts only where it is a
    character of the answer or the end mark; every other target is IGNORE: the prompt's, and the
    padding's. The rows have different lengths: pad each to the longest (T <= block_size).
    """
    sequences = [template(prompt, answer, vocab) for prompt, answer in pairs]
    T = max(len(s) for s in sequences) - 1
    assert T <= block_size, f"a pair of {T + 1} ids does not fit in block_size {block_size}"
    x = torch.zeros(len(pairs), T, dtype=torch.long)  # padding: any id, as its targets are IGNORE
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for b, ((prompt, _), ids) in enumerate(zip(pairs, sequences, strict=True)):
        seq = torch.tensor(ids)
        x[b, : len(ids) - 1] = seq[:-1]
        # the position that reads the mark before the answer: its target is the answer's first id
        start = len(template(prompt, None, vocab)) - 1
        y[b, start : len(ids) - 1] = seq[start + 1 :]  # the answer's characters and the end mark
    return x, y


@torch.no_grad()
def answer(model: torch.nn.Module, prompt: str, vocab: list[str]) -> str:
    """The model's answer to prompt: greedy (the most likely token at each step), from after
    template(prompt, None, vocab) up to the end mark, without it. The model reads at most
    model.block_size ids: stop there, end mark or not. The model is in eval mode.
    """
    idx = torch.tensor([template(prompt, None, vocab)])  # (1, T)
    end = vocab.index(END)
    written = []
    while idx.shape[1] <= model.block_size:
        logits, _ = model(idx)  # (1, T, vocab_size)
        token = int(logits[0, -1].argmax())
        if token == end:
            break
        written.append(vocab[token])
        idx = torch.cat([idx, torch.tensor([[token]])], dim=1)  # (1, T + 1)
    return "".join(written)


if __name__ == "__main__":
    sys.exit(finetune_and_compare(sys.modules[__name__]))
