"""Exercise 5, worked: generate with a key-value cache.

A solution of exercises/ex5_kv_cache.py (diff the two to see what was written).

Beyond the lecture. Stage 10's generate runs the whole context through the model for every new
character: at step t it computes the keys and values of all t positions, though inside block_size
t - 1 of them were computed at step t - 1 and have not changed. A key-value cache keeps them: each
step runs only the new character through the model, its query against the cached keys of every
position before it. The model, its weights and its training stay stage 10's.

The task: write the three parts marked "write this":

  cached_attention()                 one block's attention for the new positions alone, their keys
                                     and values added to the cache
  CachedLanguageModel.forward_cached the model for the new characters alone: stage 10's forward,
                                     at the positions that follow the cache's
  CachedLanguageModel.generate       stage 10's generate, one new character a step from the cache

and decide what happens past block_size. Stage 10 then feeds the last block_size characters at
positions 0 .. block_size - 1: every character moves one position back at each step, so its
position embedding changes, and with it every key and value of every layer. A cache cannot simply
slide on. This solution starts a new cache from the last block_size characters, as stage 10 sees
them: past block_size each step recomputes one window, as stage 10 does, and gives its characters.

Check it:   python exercises/check.py 5    (its first check needs cached_attention alone)
Sample:     python exercises/ex5_kv_cache.py --prompt "ROMEO:"   stage 10's trained model
            (checkpoints/10_gpt.pt) generating with your cache; stage 10's sampling flags
Its checks: python exercises/check.py 5 --file exercises/solutions/ex5_kv_cache.py
"""

import sys
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

# the project: the nearest folder above this file with common.py in it (for a copy elsewhere,
# exercises/check.py has put the project on the path already)
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "common.py").exists()), None)
sys.path.insert(0, str(ROOT or Path.cwd()))
import common  # noqa: E402  adjust_logits: stage 10's temperature and top_k
import tools.stages  # noqa: E402
from exercises.checks.ex5 import sample_main  # noqa: E402

# stage 10, imported as it is: its Config, its modules, the names of its weights
stage = tools.stages.load_stage("10_gpt")


class KVCache:
    """The keys and values of the positions seen so far, for every head of every layer."""

    def __init__(self, n_layer: int, n_head: int) -> None:
        # keys[layer][head] and values[layer][head]: (B, T_seen, head_size), None before the first
        self.keys = [[None] * n_head for _ in range(n_layer)]
        self.values = [[None] * n_head for _ in range(n_layer)]
        self.length = 0  # T_seen: how many positions they hold, at most block_size


def cached_attention(sa: stage.MultiHeadAttention, x: Tensor, cache: KVCache, layer: int) -> Tensor:
    """Stage 10's MultiHeadAttention sa for the new positions x (B, T_new, C) alone.

    Their queries meet the keys of every position so far: the cache's and their own. Their keys
    and values go into the cache of this layer. Returns (B, T_new, C), as sa(x) would for them.

    Use sa's own layers: for each head h of sa.heads, head.key, head.query and head.value, the
    scale head_size**-0.5, head.tril for the mask, head.dropout on the weights; then sa.proj and
    sa.dropout, as stage 10's Head and MultiHeadAttention do. New position i is position
    cache.length + i: it sees every cached position, and the new ones up to itself. Leave
    cache.length as it is: forward_cached advances it, once every layer has the new positions.
    """
    B, T_new, C = x.shape
    outs = []
    for h, head in enumerate(sa.heads):
        k = head.key(x)  # (B, T_new, hs) what the new positions contain
        v = head.value(x)  # (B, T_new, hs) what they offer
        if cache.length:  # the positions before them: computed once, at their own step
            # T_all = T_seen + T_new: the cached positions, then the new ones
            k = torch.cat([cache.keys[layer][h], k], dim=1)  # (B, T_all, hs)
            v = torch.cat([cache.values[layer][h], v], dim=1)  # (B, T_all, hs)
        cache.keys[layer][h], cache.values[layer][h] = k, v
        q = head.query(x)  # (B, T_new, hs) only the new positions ask
        # (B, T_new, hs) @ (B, hs, T_all) -> (B, T_new, T_all), scaled as in stage 10's Head
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        # new position i is position T_seen + i: it sees every position up to itself
        T_all = k.shape[1]
        mask = head.tril[T_all - T_new : T_all, :T_all]  # (T_new, T_all) the new positions' rows
        wei = wei.masked_fill(mask == 0, float("-inf"))  # (B, T_new, T_all)
        wei = F.softmax(wei, dim=-1)  # (B, T_new, T_all) each row sums to 1
        wei = head.dropout(wei)  # stage 10's own module: off in eval mode
        outs.append(wei @ v)  # (B, T_new, T_all) @ (B, T_all, hs) -> (B, T_new, hs)
    out = torch.cat(outs, dim=-1)  # (B, T_new, n_head * hs)
    return sa.dropout(sa.proj(out))  # (B, T_new, C)


class CachedLanguageModel(stage.LanguageModel):
    """Stage 10's LanguageModel with a generate that keeps keys and values. Its weights and its
    forward are stage 10's: stage 10's checkpoints load into it, and it trains as stage 10 does."""

    def new_cache(self) -> KVCache:
        return KVCache(n_layer=len(self.blocks), n_head=len(self.blocks[0].sa.heads))

    def forward_cached(self, idx: Tensor, cache: KVCache) -> Tensor:
        """The logits (B, T_new, vocab_size) of idx (B, T_new), the characters that follow the
        cache.length positions in cache; their keys and values are added to it.

        Stage 10's forward, for the new characters alone: their token embeddings plus their
        positions' (the first one is at position cache.length), then each block of self.blocks
        with cached_attention in place of block.sa, then self.ln_f and self.lm_head. The
        position table has block_size rows: never look up a position past them.
        """
        B, T_new = idx.shape
        start = cache.length  # the first new character's position: this many came before it
        if start + T_new > self.block_size:  # the position table has block_size rows
            raise ValueError(f"{start + T_new} positions pass block_size {self.block_size}")
        tok_emb = self.token_embedding_table(idx)  # (B, T_new, C)
        positions = torch.arange(start, start + T_new, device=idx.device)  # (T_new,)
        x = tok_emb + self.position_embedding_table(positions)  # (B, T_new, C)
        # each block as stage 10's Block.forward, its attention cached
        for layer, block in enumerate(self.blocks):
            x = x + cached_attention(block.sa, block.ln1(x), cache, layer)  # (B, T_new, C)
            x = x + block.ffwd(block.ln2(x))  # (B, T_new, C)
        cache.length += T_new
        return self.lm_head(self.ln_f(x))  # (B, T_new, vocab_size)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature=1.0, top_k=None) -> Tensor:
        """Stage 10's generate, the same characters, one new position a step: idx (B, T) extended
        with max_new_tokens characters, (B, T + max_new_tokens).

        Start a new cache in each call. Each step: the logits of the last position, from
        forward_cached (at the first step the prompt, its last block_size characters as stage 10
        crops it; one character after it), then stage 10's sampling, as it is (the check reads the
        logits that adjust_logits is given):

            logits = common.adjust_logits(logits, temperature, top_k)  # (B, vocab_size) on the cpu
            probs = F.softmax(logits, dim=-1)  # (B, vocab_size)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next.to(idx.device)), dim=1)  # (B, T + 1)

        Past block_size: decide what to do when the cache is full, and say why in a comment.
        """
        cache = self.new_cache()  # a new cache for each call: nothing carries over
        for _ in range(max_new_tokens):
            if cache.length == self.block_size:
                # past block_size stage 10 sees the last block_size characters at positions 0 ..
                # block_size - 1: each has moved back one position, so every key and value has
                # changed. Nothing cached can be kept: start again
                cache = self.new_cache()
            if cache.length == 0:  # a new cache: the last block_size characters, from position 0
                idx_cond = idx[:, -self.block_size :]  # (B, T') with T' <= block_size
                logits = self.forward_cached(idx_cond, cache)  # (B, T', vocab_size)
            else:  # one new character: the keys and values of the others are in the cache
                logits = self.forward_cached(idx[:, -1:], cache)  # (B, 1, vocab_size)
            logits = logits[:, -1, :]  # (B, vocab_size) only the last position predicts the next
            # stage 10's sampling, as it is
            logits = common.adjust_logits(logits, temperature, top_k)  # (B, vocab_size) on the cpu
            probs = F.softmax(logits, dim=-1)  # (B, vocab_size) the next character's probabilities
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1) one draw for each row
            idx = torch.cat((idx, idx_next.to(idx.device)), dim=1)  # (B, T + 1)
        return idx


if __name__ == "__main__":
    sys.exit(sample_main(CachedLanguageModel))
