"""Exercise 3: pre-train on a large text, then fine-tune on tiny Shakespeare.

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
The worked solution is exercises/solutions/ex3_pretrain.py: for after.
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn

# the project: the nearest folder above this file with common.py in it (for a copy elsewhere,
# exercises/check.py has put the project on the path already)
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "common.py").exists()), None)
sys.path.insert(0, str(ROOT or Path.cwd()))
from exercises.pretraining import pretrain_and_compare  # noqa: E402
from harness.checkpoints import Checkpoint  # noqa: E402

# WRITE THIS: the path of a large text to pre-train on (a Path or a str; from the project's folder)
PRETRAINING_TEXT = None


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
    # WRITE THIS
    raise NotImplementedError("carry_over() is not written yet")


def fine_tuning_optimizer(model: nn.Module, pretrained: Checkpoint, cfg) -> torch.optim.Optimizer:
    """The optimizer that fine-tunes model (its weights carried over already): an AdamW over all
    of its parameters, at cfg.learning_rate, the fine-tuning rate, lower than pre-training's
    (pretrained.config["learning_rate"]).

    pretrained.optimizer holds AdamW's state at the end of pre-training, the moving averages of
    another text's gradients, kept by the pre-training's ids. Fine-tuning starts from the
    pre-trained weights alone, as --init_from does: a fresh optimizer, with no state.
    """
    # WRITE THIS
    raise NotImplementedError("fine_tuning_optimizer() is not written yet")


if __name__ == "__main__":
    sys.exit(pretrain_and_compare(sys.modules[__name__]))
