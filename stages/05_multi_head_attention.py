"""Stage 05: multi-head attention.

Several heads run side by side, each free to look for something else. Their outputs are
concatenated back to n_embd channels. Four heads of 8 hold the weights of one head of 32.
New: MultiHeadAttention, and the n_head hyperparameter.
Predict: the same weights, split four ways. Does the split alone help?

Watch: 1:21:59-1:24:25, multi-headed self-attention: https://youtu.be/kCc8FmEb1nY?t=4919
Run: python stages/05_multi_head_attention.py    (--help lists every flag)
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
    max_iters: int = 5000  # training steps
    eval_interval: int = 500  # steps between loss estimates
    # A lower rate from here on, with more steps to make up for it: self-attention (stage 04)
    # does not tolerate a high one. Lowering it here keeps stage 04's diff about attention.
    learning_rate: float = 1e-3  # AdamW step size; lower from here on, as attention needs
    eval_iters: int = 200  # batches of each split averaged in one loss estimate
    n_embd: int = 32  # width of the token and position embeddings
    n_head: int = 4  # attention heads, each of size n_embd // n_head

    def __post_init__(self) -> None:  # checked before anything is built or trained
        if self.n_embd % self.n_head:  # the heads' outputs, concatenated, must be n_embd wide
            raise ValueError("n_embd must be divisible by n_head: each head gets n_embd // n_head")


class Head(nn.Module):
    """One head of self-attention."""

    def __init__(self, config: Config, head_size: int) -> None:
        super().__init__()
        # three views of each position's vector, each its own learned linear layer
        self.key = nn.Linear(config.n_embd, head_size, bias=False)
        self.query = nn.Linear(config.n_embd, head_size, bias=False)
        self.value = nn.Linear(config.n_embd, head_size, bias=False)
        # a buffer, not a parameter: it moves with .to(device) but is never trained
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, hs) what each position contains
        q = self.query(x)  # (B, T, hs) what each position looks for
        # Affinities: position t attends to position s by q_t . k_s, a sum of head_size products.
        # With unit-variance q and k, that sum has variance head_size; the scale makes it 1, so
        # the softmax stays diffuse instead of peaking on one position. (The video's code scales
        # by n_embd**-0.5; the lecture's repository by head_size, as here. In stage 04 they agree.)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, hs) @ (B, hs, T) -> (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # (B, T, T) hide the future
        wei = F.softmax(wei, dim=-1)  # (B, T, T) each row sums to 1
        v = self.value(x)  # (B, T, hs) what each position offers
        out = wei @ v  # (B, T, T) @ (B, T, hs) -> (B, T, hs)
        return out


class MultiHeadAttention(nn.Module):
    """Several heads of self-attention in parallel, their outputs concatenated."""

    def __init__(self, config: Config, num_heads: int, head_size: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList([Head(config, head_size) for _ in range(num_heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, num_heads * head_size)
        return out


class LanguageModel(nn.Module):
    """Token plus position embeddings, multi-head self-attention, then a linear head."""

    def __init__(self, vocab_size: int, config: Config) -> None:
        super().__init__()
        self.block_size = config.block_size
        # each token id and each position looks up a learned vector of n_embd numbers
        self.token_embedding_table = nn.Embedding(vocab_size, config.n_embd)
        self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        # n_head heads of n_embd // n_head channels: concatenated, they are n_embd wide again.
        # Four heads of 8 hold exactly the weights of one head of 32: any gain is the split's.
        # Each head's scores are now scaled by 8**-0.5, where the video's code used 32**-0.5.
        self.sa_heads = MultiHeadAttention(config, config.n_head, config.n_embd // config.n_head)
        self.lm_head = nn.Linear(config.n_embd, vocab_size)  # embedding -> next-character logits

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape
        # idx and targets are both (B, T) tensors of integers
        tok_emb = self.token_embedding_table(idx)  # (B, T, C) with C = n_embd
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))  # (T, C)
        x = tok_emb + pos_emb  # (B, T, C): the position vectors broadcast over the batch
        x = self.sa_heads(x)  # (B, T, C) n_head heads side by side
        logits = self.lm_head(x)  # (B, T, vocab_size)

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
            # the position table has block_size rows: keep the last block_size tokens
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
