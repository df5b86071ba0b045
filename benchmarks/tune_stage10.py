"""How stage 10's CPU preset was chosen: rerun the measurements its docstring reports.

Run by hand (each full run takes 4 to 5 minutes on 2 cores; never from the tests' defaults):

    python benchmarks/tune_stage10.py --list                  the candidates and their flags
    python benchmarks/tune_stage10.py throughput              characters a second per model size (a minute or two)
    python benchmarks/tune_stage10.py chosen lr3e-3-d0.1      full runs of those candidates, one after another

Step 1, throughput: the model sizes of the sweep, timed for a few training steps each on random
tokens. Step 2, full runs: each candidate is `python stages/10_gpt.py --preset cpu` plus its flags,
the command a user types, and prints its val loss at every estimate and its wall time.

The rule: the lecture's recipe (dropout on, a constant learning rate), only smaller, and the best
val loss within five minutes on 2 cores. With a constant rate a run's curve does not depend on its
length, so each candidate runs 2600 steps with an estimate every 200, and one curve gives the val
loss of every shorter run.

Measured on an AMD EPYC with 2 cores, torch 2.13.0, CPU, 2026-12-03 (the same architecture
throughout: n_embd 128, 4 heads, 4 layers, block 64, batch 32; noise in val about 0.02):

  candidate        val at 1400  1600    2000    2600 steps
  lr2e-3-d0.1          1.7304  1.7101  1.6981  1.6510
  lr3e-3-d0.1          1.7304  1.7173  1.6750  1.6565
  lr2e-3-d0.2          1.7895  1.7589  1.7304  1.7013   (the lecture's rate: costs 0.05 in so short a run)

  time       a step with dropout takes about 0.18 s here (2000 steps and their estimates in 358 s, the
             one run with the machine to itself), against 0.12 s without: dropout's masks cost a third
  chosen     2e-3, dropout 0.1, 1500 steps: the longest run that stays inside five minutes

The same architecture without dropout and with nanoGPT's warm-up and cosine decay reached 1.5777 in
2000 steps (245 s, the machine and date above). That is not exercise 4's fourth worked solution:
exercises/solutions/ex4_lr_schedule.py keeps dropout and stage 10's budget, and compare.py measures
it against this preset (docs/exercises.md shows the figures).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import harness  # noqa: E402
import harness.machine  # noqa: E402
import harness.stages  # noqa: E402

LOSS_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")

# name -> (flags on top of --preset cpu, what it tests): one curve each, 2600 steps long
CURVE = "--max_iters 2600 --eval_interval 200"
CANDIDATES: dict[str, tuple[str, str]] = {
    "lr2e-3-d0.1": (f"{CURVE} --learning_rate 2e-3 --dropout 0.1", "the preset's rate and dropout"),
    "lr3e-3-d0.1": (f"{CURVE} --learning_rate 3e-3 --dropout 0.1", "a larger constant rate"),
    "lr2e-3-d0.2": (f"{CURVE} --learning_rate 2e-3 --dropout 0.2", "the lecture's dropout rate"),
    "chosen": ("", "the preset as it stands: 1500 steps at 2e-3, dropout 0.1"),
}

# (n_embd, n_head, n_layer, block_size, batch_size): the throughput sweep
SIZES = [
    (128, 4, 4, 64, 32),
    (96, 3, 4, 64, 48),
    (128, 4, 4, 128, 16),
    (128, 4, 4, 128, 32),
    (192, 6, 4, 64, 32),
    (256, 8, 4, 64, 32),
    (128, 4, 6, 64, 32),
    (128, 4, 3, 64, 32),
]


def full_runs(names: list[str], extra: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            flags = CANDIDATES[name][0].split()
            cmd = [
                sys.executable,
                "stages/10_gpt.py",
                "--preset",
                "cpu",
                "--device",
                "cpu",
                *flags,
                "--checkpoint",
                f"{tmp}/{name}.pt",
                *extra,
            ]
            print(f"{name}: python stages/10_gpt.py --preset cpu {' '.join(flags)}", flush=True)
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                sys.exit(f"error: candidate {name} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            curve = [(int(s), float(t), float(v)) for s, t, v in LOSS_LINE.findall(done.stdout)]
            print("  " + ", ".join(f"{s}: {v:.4f}" for s, _, v in curve) + f"  ({wall:.0f} s)", flush=True)
            rows.append({"name": name, "wall_s": wall, "train": curve[-1][1], "val": curve[-1][2]})
    return rows


def throughput(steps: int) -> None:
    stage = harness.stages.load_stage("10")
    data = torch.randint(65, (200_000,))
    gen = torch.Generator().manual_seed(0)
    print(f"{'n_embd':>6} {'heads':>5} {'layers':>6} {'block':>5} {'batch':>5} {'params':>9} {'chars/s':>8}")
    for n_embd, n_head, n_layer, block, batch in SIZES:
        cfg = stage.Config(
            n_embd=n_embd, n_head=n_head, n_layer=n_layer, block_size=block, batch_size=batch, dropout=0.0
        )
        torch.manual_seed(0)
        model = stage.LanguageModel(65, cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        times = []
        for i in range(steps + 2):  # the first two steps warm up
            t0 = time.perf_counter()
            x, y = common.get_batch(data, batch, block, gen)
            _, loss = model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        n_params = sum(p.numel() for p in model.parameters())
        rate = batch * block / statistics.median(times)
        print(f"{n_embd:>6} {n_head:>5} {n_layer:>6} {block:>5} {batch:>5} {n_params:>9,} {rate:>8,.0f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "what", nargs="*", help=f"'throughput', and/or candidates to run in full: {', '.join(CANDIDATES)}"
    )
    parser.add_argument("--list", action="store_true", help="list the candidates and exit")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per size in the throughput sweep")
    parser.add_argument(
        "--extra", default="", help="flags added to every full run, e.g. '--max_iters 20' for a smoke test"
    )
    args = parser.parse_args()
    unknown = [w for w in args.what if w != "throughput" and w not in CANDIDATES]
    if unknown:
        parser.error(f"unknown: {' '.join(unknown)}; choose from throughput, {', '.join(CANDIDATES)}")
    if args.list or not args.what:
        for name, (flags, why) in CANDIDATES.items():
            print(f"{name:<10} {flags or '(no flags)':<84} {why}")
        return 0
    print(f"machine: {harness.machine.machine_name()}, torch {torch.__version__}", flush=True)
    if "throughput" in args.what:
        throughput(args.steps)
    names = [w for w in args.what if w in CANDIDATES]
    if names:
        rows = full_runs(names, args.extra.split())
        print()
        for r in rows:
            print(f"{r['name']:<8} val {r['val']:.4f}  train {r['train']:.4f}  {r['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
