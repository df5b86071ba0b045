"""Stage 01: the bigram model, and the whole pipeline around it.

Text becomes character ids, and a batch pairs inputs x with targets y, which is x shifted by one.
The model is one vocab x vocab table: row i scores each character that may follow character i.
New: everything. The data, the batches, the loss estimate and the loop serve every later stage.
Predict: how far below a uniform guess can one previous character bring the loss?

Watch: 0:07:52-0:42:13, the data, batches, the bigram: https://youtu.be/kCc8FmEb1nY?t=472
Run: python stages/01_bigram.py    (--help lists every flag)
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import common  # noqa: E402  the lecture's shared parts: text, tokenizer, batches, loss estimate
import harness  # noqa: E402  the program around them: command line, checkpoints, progress, Ctrl-C


@dataclass
class Config:
    """Hyperparameters: each is also a command-line flag (--max_iters 500)."""

    batch_size: int = 32  # independent sequences processed in parallel in each step
    block_size: int = 8  # context length: the most characters a prediction looks back at
    max_iters: int = 3000  # training steps
    eval_interval: int = 300  # steps between loss estimates
    learning_rate: float = 1e-2  # AdamW step size; a model this small copes with a large one
    eval_iters: int = 200  # batches of each split averaged in one loss estimate


class LanguageModel(nn.Module):
    """Bigram model: the next character's logits are read off a table row for the current one."""

    def __init__(self, vocab_size: int, config: Config) -> None:
        super().__init__()
        self.block_size = config.block_size
        # each token directly reads off the logits for the next token from a lookup table
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        # idx and targets are both (B, T) tensors of integers
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)

        if targets is None:
            loss = None
        else:
            B, T, C = logits.shape  # C is vocab_size here: one logit per class
            # The mean of -log(probability of the right next character). A uniform guess over the
            # vocabulary gives ln(vocab_size): the loss that learning has to beat.
            # cross_entropy wants the classes in the second dimension: flatten batch and time
            loss = F.cross_entropy(logits.view(B * T, C), targets.view(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature=1.0, top_k=None) -> Tensor:
        """Extend idx (B, T) with max_new_tokens sampled tokens: returns (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            # keep the last block_size tokens: a bigram reads only the last one, but from stage 02
            # on the position table has just block_size rows
            idx_cond = idx[:, -self.block_size :]  # (B, T') with T' <= block_size
            logits, _ = self(idx_cond)  # (B, T', vocab_size)
            logits = logits[:, -1, :]  # (B, vocab_size) only the last position predicts the next
            # temperature and top_k reshape the logits (safely, even at 0); then sample from them
            logits = common.adjust_logits(logits, temperature, top_k)  # (B, vocab_size) on the cpu
            probs = F.softmax(logits, dim=-1)  # (B, vocab_size) the next token's probabilities
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1) one draw for each row
            idx = torch.cat((idx, idx_next.to(idx.device)), dim=1)  # (B, T + 1)
        return idx


def main(argv: list[str] | None = None) -> None:
    run = harness.start(__file__, Config, __doc__, argv)
    cfg = run.config
    model = LanguageModel(run.vocab_size, cfg).to(run.device)
    # fused: one kernel updates every parameter, instead of a Python loop over them
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, fused=True)
    trainer = harness.Trainer(run, model, optimizer)  # loads a checkpoint; compiles with --compile

    for step in trainer.steps():  # from 0 (or the checkpoint's step) to max_iters - 1
        # every once in a while estimate the loss on the train and val sets
        if step % cfg.eval_interval == 0 or step == cfg.max_iters - 1:
            losses = common.estimate_loss(model, run.data, cfg, run.eval_gen)  # {"train", "val"}
            trainer.log_estimate(step, losses)  # print, add to the history, save a checkpoint

        # inputs (B, T) and targets (B, T), the inputs shifted by one; from run.train_gen, saved
        # in each checkpoint, so that a resumed run draws the batches it would have drawn
        xb, yb = common.get_batch(run.data["train"], cfg.batch_size, cfg.block_size, run.train_gen)
        with trainer.autocast():  # bfloat16 with --dtype bfloat16; otherwise changes nothing
            logits, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trainer.count_step(loss)  # progress bar; stops on a nan or inf loss

    trainer.finish()  # saves the final checkpoint and prints a sample from the model


if __name__ == "__main__":
    sys.exit(harness.run_main(main))
