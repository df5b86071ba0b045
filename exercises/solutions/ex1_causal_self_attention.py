"""Exercise 1, worked: every head in one module, the heads as a batch dimension.

A solution of exercises/ex1_causal_self_attention.py (diff the two to see what was written): the
forward pass by hand, and CausalSelfAttentionSDPA, the same with F.scaled_dot_product_attention.

From the lecture (its first exercise): "The n-dimensional tensor mastery challenge: Combine the
Head and MultiHeadAttention into one class that processes all the heads in parallel, treating the
heads as another batch dimension (answer is in nanoGPT)."

The task: write CausalSelfAttention.forward below. It must compute exactly what stage 10's
MultiHeadAttention computes, n_head Heads and their projection, but with one matrix product for all
heads at once instead of a Python loop over them:

  x (B, T, C) -> q, k, v (B, n_head, T, head_size) -> scores (B, n_head, T, T), masked, softmaxed
              -> the weights times v (B, n_head, T, head_size) -> (B, T, n_head * head_size)
              -> proj (B, T, C)

__init__ is given: it fixes where each head's weights live, so that stage 10's can be copied in.
Rows h * head_size to (h + 1) * head_size of query, key and value are head h's. Keep the two
dropouts where stage 10 has them: attn_dropout on the attention weights after the softmax,
resid_dropout after the projection (use them as modules, or read their .p and self.training, as
F.scaled_dot_product_attention's dropout_p needs). F.scaled_dot_product_attention may do the
middle for you, once you have done it by hand.

Check it:   python exercises/check.py 1
Train it:   python exercises/ex1_causal_self_attention.py   (stage 10 with your attention, its
            own loop and flags, into checkpoints/ex1_causal_self_attention.pt)
Its checks: python exercises/check.py 1 --file exercises/solutions/ex1_causal_self_attention.py
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

# the project: the nearest folder above this file with common.py in it (for a copy elsewhere,
# exercises/check.py has put the project on the path already)
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "common.py").exists()), None)
sys.path.insert(0, str(ROOT or Path.cwd()))
from exercises.learner_stage import train_stage_10_with  # noqa: E402


class CausalSelfAttention(nn.Module):
    """Every head of causal self-attention in one module: stage 10's MultiHeadAttention, batched."""

    def __init__(self, config, num_heads: int, head_size: int) -> None:
        super().__init__()  # stage 10's MultiHeadAttention's arguments: this replaces it
        self.n_head, self.head_size = num_heads, head_size
        width = num_heads * head_size  # all heads side by side: head h is rows h*hs .. (h+1)*hs - 1
        self.query = nn.Linear(config.n_embd, width, bias=False)
        self.key = nn.Linear(config.n_embd, width, bias=False)
        self.value = nn.Linear(config.n_embd, width, bias=False)
        self.proj = nn.Linear(width, config.n_embd)  # back into the residual stream, as in stage 10
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        self.register_buffer("tril", mask.view(1, 1, config.block_size, config.block_size))
        self.attn_dropout = nn.Dropout(config.dropout)  # on the attention weights
        self.resid_dropout = nn.Dropout(config.dropout)  # after the projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size
        # split the channels into heads, then move the heads next to the batch: one more batch dim
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        # every head's affinities in one product, scaled by 1/sqrt(head_size) as in stage 10's Head
        wei = q @ k.transpose(-2, -1) * hs**-0.5  # (B, nh, T, hs) @ (B, nh, hs, T) -> (B, nh, T, T)
        wei = wei.masked_fill(self.tril[:, :, :T, :T] == 0, float("-inf"))  # hide the future
        wei = F.softmax(wei, dim=-1)  # (B, nh, T, T) each row sums to 1
        wei = self.attn_dropout(wei)  # randomly cut some of the communication
        out = wei @ v  # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
        # the heads side by side again, in the order stage 10's torch.cat puts them
        out = out.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh * hs)
        return self.resid_dropout(self.proj(out))  # (B, T, C)


class CausalSelfAttentionSDPA(CausalSelfAttention):
    """The same, with PyTorch's fused attention doing the middle: scores, mask, softmax, dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_size
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        # its default scale is 1/sqrt(hs); its dropout is not a module, so it needs self.training
        p = self.attn_dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        out = out.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh * hs)
        return self.resid_dropout(self.proj(out))  # (B, T, C)


if __name__ == "__main__":
    sys.exit(train_stage_10_with(CausalSelfAttention, __file__))
