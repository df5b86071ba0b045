"""Exercise 5: generate with a key-value cache.

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
slide on. Whatever you choose, the characters must stay stage 10's.

Check it:   python exercises/check.py 5    (its first check needs cached_attention alone)
Sample:     python exercises/ex5_kv_cache.py --prompt "ROMEO:"   stage 10's trained model
            (checkpoints/10_gpt.pt) generating with your cache; stage 10's sampling flags
A worked solution is in exercises/solutions/ex5_kv_cache.py: for after.
"""

import sys
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: F401  (F.softmax)

# the project: the nearest folder above this file with common.py in it (for a copy elsewhere,
# exercises/check.py has put the project on the path already)
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "common.py").exists()), None)
sys.path.insert(0, str(ROOT or Path.cwd()))
import common  # noqa: E402, F401  adjust_logits: stage 10's temperature and top_k
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
    # --- write this: (B, T_new, C) -> (B, T_new, C), the cache of this layer extended ----------
    raise NotImplementedError("not written yet: cached_attention")


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
        # --- write this: (B, T_new) -> (B, T_new, vocab_size), cache.length counting them -------
        raise NotImplementedError("not written yet: CachedLanguageModel.forward_cached")

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
        # --- write this: a loop of max_new_tokens steps, each from the cache -----------------------
        raise NotImplementedError("not written yet: CachedLanguageModel.generate")


if __name__ == "__main__":
    sys.exit(sample_main(CachedLanguageModel))
