"""Stage 08: residual connections.

Each sublayer now adds its output to its input, x = x + sublayer(x), instead of replacing it.
The gradient flows down the sum straight to every block, so the stack trains.
New: the two additions in Block, and projections back into this residual stream.
Predict: stage 07's stack with the additions. Does depth pay off now?

Watch: 1:26:48-1:32:51, residual connections: https://youtu.be/kCc8FmEb1nY?t=5208
Run: python stages/08_residual_connections.py    (--help lists every flag)
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
    n_layer: int = 3  # Transformer blocks stacked one after another

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
        # A projection back into the residual stream: what the heads found, as something to add.
        self.proj = nn.Linear(num_heads * head_size, config.n_embd)  # heads' outputs -> n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, num_heads * head_size)
        out = self.proj(out)  # (B, T, C)
        return out


class FeedForward(nn.Module):
    """A linear layer and a non-linearity, applied to each position on its own."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.net = nn.Sequential(
            # 4x wider inside, as in the Transformer paper (512 wide, 2048 inside). The lecture
            # adds this capacity with the residual connections: not all of the gain is theirs.
            nn.Linear(config.n_embd, 4 * config.n_embd),  # (B, T, 4 * C)
            nn.ReLU(),
            nn.Linear(4 * config.n_embd, config.n_embd),  # projection back into the residual stream
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, T, C): the same weights at every position, no mixing across time


class Block(nn.Module):
    """Transformer block: communication (attention) followed by computation (feed-forward)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        # Communication, then computation, in one unit that can be stacked.
        head_size = config.n_embd // config.n_head  # n_head heads, n_embd wide when concatenated
        self.sa = MultiHeadAttention(config, config.n_head, head_size)
        self.ffwd = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Residual connections: each sublayer adds to x instead of replacing it. Addition passes
        # the gradient through unchanged, so it reaches every block directly, and the stream
        # carries the embeddings to the head with each block's output added along the way.
        x = x + self.sa(x)  # (B, T, C) the block adds to the residual stream ...
        x = x + self.ffwd(x)  # (B, T, C) ... instead of replacing it
        return x


class LanguageModel(nn.Module):
    """Token plus position embeddings, n_layer Transformer blocks, then a linear head."""

    def __init__(self, vocab_size: int, config: Config) -> None:
        super().__init__()
        self.block_size = config.block_size
        # each token id and each position looks up a learned vector of n_embd numbers
        self.token_embedding_table = nn.Embedding(vocab_size, config.n_embd)
        self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        # Each block reads the residual stream and adds its result back into it.
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, vocab_size)  # embedding -> next-character logits

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape
        # idx and targets are both (B, T) tensors of integers
        tok_emb = self.token_embedding_table(idx)  # (B, T, C) with C = n_embd
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))  # (T, C)
        x = tok_emb + pos_emb  # (B, T, C): the position vectors broadcast over the batch
        x = self.blocks(x)  # (B, T, C)
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
