"""Exercise 3, worked: pre-train on a large text, then fine-tune on tiny Shakespeare.

A solution of exercises/ex3_pretrain.py (diff the two to see what was written). Run it as the
exercise: python exercises/solutions/ex3_pretrain.py [flags], into checkpoints of its own.

From the lecture: "Find a dataset that is very large, so large that you can't see a gap between
train and val loss. Pretrain the transformer on this data, then initialize with that model and
finetune it on tiny shakespeare with a smaller number of steps and lower learning rate. Can you
obtain a lower validation loss by the use of pretraining?"

The program around this file (exercises/pretraining.py) pre-trains stage 10's model (0.8 million
parameters) on PRETRAINING_TEXT; then, for N steps, it fine-tunes that model on tiny Shakespeare
at a lower rate, and trains the same model from scratch for the same N steps with the same seed
and batches; and it prints both validation losses side by side.

The two texts do not have the same characters: a dictionary has brackets and most digits that
the plays lack, the plays a '$' that the dictionary lacks. So the pre-trained model's vocabulary is
not tiny Shakespeare's, and an id means one character in one and another in the other. Write the
three parts marked WRITE THIS:

  PRETRAINING_TEXT         the large text. tools/corpus.py makes one from Webster's dictionary
                           of 1913 (its docstring says where to get it), about 22 times tiny
                           Shakespeare; the complete works of Shakespeare will not do: they hold
                           the validation text
  carry_over()             the pre-trained weights into the fine-tuning model, rows by character
  fine_tuning_optimizer()  what fine-tuning trains with

(stages/10_gpt.py --init_from PATH is the simple case: a model pre-trained with --vocab_from
data/input.txt already has every character of tiny Shakespeare, at the ids that fine-tuning uses.)

Check it:   python exercises/check.py 3        each part on tiny models, then a tiny experiment
Run it:     python exercises/ex3_pretrain.py   pre-training (2,000 steps, about four minutes on 2
            cores; kept in checkpoints/ and reused), then for N = 200 and 500 a
            fine-tuning run and a run from scratch. Ctrl-C saves; add --resume to go on
            python exercises/ex3_pretrain.py --seeds 3   each pair with 3 seeds: the noise too
            python exercises/ex3_pretrain.py --help      the texts, the budgets, the rates
Its checks: python exercises/check.py 3 --file exercises/solutions/ex3_pretrain.py
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]  # the project root
sys.path.insert(0, str(ROOT))
from exercises.pretraining import pretrain_and_compare  # noqa: E402
from harness.checkpoints import Checkpoint  # noqa: E402

# Webster's 1913 dictionary without its overlap with tiny Shakespeare: python tools/corpus.py. A
# relative path is from the project's folder, so a copy of this file kept elsewhere finds it too
PRETRAINING_TEXT = "data/gcide.txt"
# the tensors with one row for each character, by id
PER_CHARACTER = ("token_embedding_table.weight", "lm_head.weight", "lm_head.bias")


def carry_over(pretrained: Checkpoint, model: nn.Module, vocab: str) -> None:
    """Put the pre-trained weights into model: stage 10's LanguageModel, freshly built (its weights
    are its initialisation) for vocab, the fine-tuning text's characters.

    pretrained.model is the pre-trained weights by name (a state_dict), and pretrained.vocab its
    characters: id i is pretrained.vocab[i], as id i is vocab[i] in model. Three tensors have one
    row for each character, in the order of the ids:

        token_embedding_table.weight   (vocab_size, n_embd)   the vector each character looks up
        lm_head.weight                 (vocab_size, n_embd)   each character's output ...
        lm_head.bias                   (vocab_size,)          ... and its bias

    In each of them, the row of a character that both vocabularies have becomes its pre-trained
    row (found by the character: its id differs between the two); the row of a character the
    pre-training text never had stays as model initialised it. Every other tensor is copied as it
    is. Change model in place (under torch.no_grad()); return nothing.
    """
    old_id = {ch: i for i, ch in enumerate(pretrained.vocab)}
    # the characters both texts have: their ids here (new) and in the pre-trained model (old)
    shared = [(i, old_id[ch]) for i, ch in enumerate(vocab) if ch in old_id]
    new = torch.tensor([i for i, _ in shared], dtype=torch.long)  # (S,)
    old = torch.tensor([j for _, j in shared], dtype=torch.long)  # (S,)
    with torch.no_grad():
        for name, mine in model.state_dict().items():  # views of model's own tensors
            theirs = pretrained.model[name]
            if name in PER_CHARACTER:
                # rows by character: (S, n_embd), or (S,) for the bias; the other rows keep
                # the fresh model's initialisation, as for a character never seen
                mine[new] = theirs[old]
            else:
                mine.copy_(theirs)  # every other weight (and the causal masks) as it was


def fine_tuning_optimizer(model: nn.Module, pretrained: Checkpoint, cfg) -> torch.optim.Optimizer:
    """The optimizer that fine-tunes model (its weights carried over already): an AdamW over all
    of its parameters, at cfg.learning_rate, the fine-tuning rate, lower than pre-training's
    (pretrained.config["learning_rate"]).

    pretrained.optimizer holds AdamW's state at the end of pre-training, the moving averages of
    another text's gradients, kept by the pre-training's ids. Fine-tuning starts from the
    pre-trained weights alone, as --init_from does: a fresh optimizer, with no state.
    """
    # pretrained.optimizer is left alone: its moments would push the weights the way another
    # text's gradients went, and its param_groups would bring pre-training's rate back
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)


if __name__ == "__main__":
    sys.exit(pretrain_and_compare(sys.modules[__name__]))
