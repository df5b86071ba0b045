"""Stage 03: the averaging trick, a causal bag of words.

Tokens start to talk: each position becomes the average of itself and every earlier position.
A masked softmax over all-zero affinities computes it; attention will learn those affinities.
New: CausalAverage between the embeddings and the head, and a lower learning rate.
Predict: the average blurs the last character with all the others. Better or worse than 02?

Watch: 0:42:13-0:58:26, the averaging trick: https://youtu.be/kCc8FmEb1nY?t=2533
Run: python stages/03_causal_average.py    (--help lists every flag)
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


def average_loop(x: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) -> (B, T, C): position t becomes the mean of positions 0..t, one at a time."""
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        out[:, t] = x[:, : t + 1].mean(dim=1)  # (B, C)
    return out


def average_matmul(x: torch.Tensor) -> torch.Tensor:
    """The same with one matrix multiply: row t of wei holds 1/(t+1) for positions 0..t, 0 after."""
    T = x.shape[1]
    wei = torch.tril(torch.ones(T, T, device=x.device))  # (T, T) ones on and below the diagonal
    wei = wei / wei.sum(dim=1, keepdim=True)  # (T, T) each row sums to 1
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C): batched over B


def average_softmax(x: torch.Tensor) -> torch.Tensor:
    """The same through softmax: the form that self-attention generalises."""
    T = x.shape[1]
    tril = torch.tril(torch.ones(T, T, device=x.device))
    wei = torch.zeros((T, T), device=x.device)  # (T, T) affinities: all equal, for now
    wei = wei.masked_fill(tril == 0, float("-inf"))  # the future gets -inf ...
    wei = F.softmax(wei, dim=-1)  # ... so weight 0 after softmax; the past shares the rest equally
    return wei @ x  # (B, T, C)


def show_the_three_forms() -> None:
    """Print the averaging weights, and how far apart the three forms' outputs are."""
    wei = average_matmul(torch.eye(4).unsqueeze(0))[0]  # (T, T) = wei @ I: the weights themselves
    print("the averaging trick, T = 4: row t holds the weights of positions 0..t")
    for row in wei.tolist():
        print("  " + " ".join(f"{w:.2f}" for w in row))
    # (B, T, C) from a generator of its own: the run's seed draws exactly what it drew before
    x = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(0))
    loop = average_loop(x)  # (B, T, C) the slow, obvious form
    gap = max((average_matmul(x) - loop).abs().max(), (average_softmax(x) - loop).abs().max())
    print(f"loop, matmul and softmax forms agree to {gap:.1e} on a random (4, 8, 2) batch")


class CausalAverage(nn.Module):
    """Each position becomes the mean of itself and every earlier position (no parameters)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        # a buffer, not a parameter: it moves with .to(device) but is never trained
        self.register_buffer("tril", torch.tril(torch.ones(config.block_size, config.block_size)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        wei = torch.zeros((T, T), device=x.device)  # (T, T) affinities: all equal
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # (T, T) hide the future
        wei = F.softmax(wei, dim=-1)  # (T, T) each row sums to 1
        out = wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)
        return out


class LanguageModel(nn.Module):
    """Token plus position embeddings, averaged over the past, then a linear head."""

    def __init__(self, vocab_size: int, config: Config) -> None:
        super().__init__()
        self.block_size = config.block_size
        # each token id and each position looks up a learned vector of n_embd numbers
        self.token_embedding_table = nn.Embedding(vocab_size, config.n_embd)
        self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        self.average = CausalAverage(config)  # tokens talk: each sees the mean of its past
        self.lm_head = nn.Linear(config.n_embd, vocab_size)  # embedding -> next-character logits

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape
        # idx and targets are both (B, T) tensors of integers
        tok_emb = self.token_embedding_table(idx)  # (B, T, C) with C = n_embd
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))  # (T, C)
        x = tok_emb + pos_emb  # (B, T, C): the position vectors broadcast over the batch
        # Equal weights: at the 8th position only 1/8 of x comes from the current character,
        # the one that matters most for the next. Stage 04 learns the weights instead.
        x = self.average(x)  # (B, T, C)
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
    # the loop, the matrix multiply and the masked softmax: three ways to the same averages
    show_the_three_forms()
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
