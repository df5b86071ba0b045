"""The lecture's training loop, as written in the video, around one stage's model: the baseline.

The benchmark times this against the stage itself. Both use the same model class and the same
hyperparameters; what differs is what the stages changed around the model: batches gathered in one
indexing operation instead of torch.stack over a Python list, the loss estimate fed in large chunks
instead of eval_iters batches of batch_size, and AdamW's fused kernel instead of its per-parameter
loop. Everything else (seed, split, the eval schedule, the final 500-character sample) is the video's.

Run: python benchmarks/lecture_reference.py 09      (prints the video's log lines)
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import tools.stages  # noqa: E402


def main() -> None:
    stage = tools.stages.load_stage(sys.argv[1])
    cfg = stage.Config()
    batch_size, block_size, max_iters = cfg.batch_size, cfg.block_size, cfg.max_iters
    eval_interval, learning_rate, eval_iters = cfg.eval_interval, cfg.learning_rate, cfg.eval_iters
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(1337)

    with open(common.DATA_PATH, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]  # noqa: E731 (the video's spelling)
    decode = lambda ids: "".join([itos[i] for i in ids])  # noqa: E731

    data = torch.tensor(encode(text), dtype=torch.long)
    n = int(0.9 * len(data))
    train_data = data[:n]
    val_data = data[n:]

    def get_batch(split):
        data = train_data if split == "train" else val_data
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + block_size + 1] for i in ix])
        return x.to(device), y.to(device)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ["train", "val"]:
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out

    model = stage.LanguageModel(vocab_size, cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    for iter in range(max_iters):
        if iter % eval_interval == 0 or iter == max_iters - 1:
            losses = estimate_loss()
            print(f"step {iter}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        xb, yb = get_batch("train")
        logits, loss = model(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    context = torch.zeros((1, 1), dtype=torch.long, device=device)
    print(decode(model.generate(context, max_new_tokens=500)[0].tolist()))


if __name__ == "__main__":
    main()
