"""How stage 10's cpu preset is chosen: each candidate's val curve and step time, recorded.

Run by hand (a pair of curves takes ten minutes or more on 2 cores; never from the tests' defaults):

    python benchmarks/tune_stage10.py --list                  the candidates and their flags
    python benchmarks/tune_stage10.py throughput              ms a training step of each candidate (a minute)
    python benchmarks/tune_stage10.py curves w128-l4 w96-l4   those candidates' val curves

The rule: the lecture's recipe (dropout on, a constant learning rate), only smaller, and the best
val loss within five minutes on 2 cores.

With a constant rate, a run's curve does not depend on its length: one long run gives the val loss
of every shorter one. So each candidate trains once, long, with an estimate every 400 steps over 50
batches (less noisy than the preset's 20). A curve counts steps, not seconds, so two candidates
train at once (--jobs, two by default), one thread each. Their speed comes from `throughput`, with the
machine to itself.

Each candidate is `python stages/10_gpt.py --preset cpu` with its flags, the command a user types.
The figures go to benchmarks/results.json, one entry a candidate ("stage10 cpu candidate NAME");
`python tools/pages.py` makes the table in docs/performance.md from them.
"""

from __future__ import annotations

import argparse
import json
import os
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
import tools.machine  # noqa: E402
import tools.stages  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.json"
PREFIX = "stage10 cpu candidate "
LOSS_LINE = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
CURVE = ["--eval_interval", "400", "--eval_iters", "50"]  # an estimate every 400 steps, over 50 batches


def candidate(why: str, steps: int, n_embd=128, n_head=4, n_layer=4, batch_size=32, learning_rate=2e-3) -> dict:
    """One candidate: every size it trains at, so that it does not depend on the preset of the day."""
    sizes = dict(n_embd=n_embd, n_head=n_head, n_layer=n_layer, block_size=64, batch_size=batch_size)
    sizes.update(learning_rate=learning_rate, dropout=0.1)  # the lecture's recipe: dropout on, a constant rate
    return {"why": why, "steps": steps, "sizes": sizes}


CANDIDATES = {
    "w128-l4": candidate("the preset's shape: 4 blocks of 128, batches of 32", 2800),
    "w128-l4-b16": candidate("half the batch, twice the steps", 4400, batch_size=16),
    "w128-l4-lr3e-3": candidate("a larger constant rate", 2800, learning_rate=3e-3),
    "w128-l4-b48": candidate("a larger batch at a larger rate", 2000, batch_size=48, learning_rate=3e-3),
    "w96-l4": candidate("narrower, at a larger rate", 3600, n_embd=96, learning_rate=3e-3),
    "w128-l3": candidate("one block fewer", 3600, n_layer=3),
    "w192-l3": candidate("wider and shallower: 6 heads of 32", 2000, n_embd=192, n_head=6, n_layer=3),
    "w192-l4": candidate("wider: 6 heads of 32", 1600, n_embd=192, n_head=6),
}


def flags(name: str) -> list[str]:
    c = CANDIDATES[name]
    return [f for k, v in c["sizes"].items() for f in (f"--{k}", str(v))] + ["--max_iters", str(c["steps"] + 1)]


def curves(names: list[str], extra: list[str], jobs: int, out_json: Path) -> list[dict]:
    """Each candidate's losses at every estimate, jobs of them training at once with one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if jobs > 1 else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for first in range(0, len(names), jobs):
            running = {}
            for name in names[first : first + jobs]:
                args = ["--preset", "cpu", "--device", "cpu", *flags(name), *CURVE, "--num_tokens", "1", *extra]
                print(f"{name}: python stages/10_gpt.py {' '.join(args)}", flush=True)
                cmd = [sys.executable, "stages/10_gpt.py", *args, "--checkpoint", f"{tmp}/{name}.pt"]
                out = open(f"{tmp}/{name}.log", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
                running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env), out)
            for name, (process, out) in running.items():
                code = process.wait()
                out.seek(0)
                text = out.read()
                out.close()
                if code != 0:
                    for other, _ in running.values():  # no run is left training on its own
                        other.kill()
                        other.wait()
                    record(rows, out_json)  # the curves already finished are kept
                    sys.exit(f"error: candidate {name} failed ({code}): {text.strip().splitlines()[-1:]}")
                curve = [[int(s), float(t), float(v)] for s, t, v in LOSS_LINE.findall(text)]
                print(f"  {name}: " + ", ".join(f"{s}: {v:.4f}" for s, _, v in curve), flush=True)
                threads = 1 if jobs > 1 else torch.get_num_threads()
                rows.append({"figure": PREFIX + name, "name": name, "curve": curve, "threads": threads})
    return rows


def throughput(names: list[str], steps: int) -> list[dict]:
    """ms a training step of each candidate's model, on random tokens, as the stage runs it on a CPU."""
    from bench import training_step  # beside this file

    stage = tools.stages.load_stage("10")
    rows = []
    for name in names:
        _, step = training_step(stage, stage.Config(**CANDIDATES[name]["sizes"]))
        times = []
        for i in range(steps + 2):  # the first two steps warm up
            t0 = time.perf_counter()
            step()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        ms = 1000 * statistics.median(times)
        print(f"  {name}: {ms:.1f} ms a step", flush=True)
        rows.append({"figure": PREFIX + name, "name": name, "ms_per_step": round(ms, 1)})
    return rows


def record(rows: list[dict], path: Path = RESULTS) -> None:
    """Merge rows into path's entries of the same candidate: a curve and a step time recorded apart."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"results": []}
    entries = {r["figure"]: r for r in data["results"]}
    stamp = {"machine": tools.machine.machine_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for row in rows:
        name = row["name"]
        old = entries.get(row["figure"], {"figure": row["figure"]})
        new = {**old, **row, **{k: v for k, v in CANDIDATES[name].items() if k != "steps"}, "flags": flags(name)}
        stamped = "curve" if "curve" in row else "ms_per_step"
        new[f"{stamped}_measured"] = stamp
        new.update(target="reported: the val curve and the step time of a candidate for the cpu preset", met=True)
        entries[row["figure"]] = new  # in the old entry's place, or at the end
    data["results"] = list(entries.values())
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} figure(s) to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("what", nargs="?", choices=["throughput", "curves"], help="what to measure")
    parser.add_argument("names", nargs="*", help=f"candidates, or all: {', '.join(CANDIDATES)}")
    parser.add_argument("--list", action="store_true", help="list the candidates and exit")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each candidate for throughput")
    parser.add_argument("--jobs", type=int, default=2, help="curves trained at once, one thread each (1: all threads)")
    parser.add_argument(
        "--extra", default="", help="flags added to every curve, e.g. '--max_iters 20' for a smoke test"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON the figures go to")
    args = parser.parse_args()
    if args.list or args.what is None:
        for name, c in CANDIDATES.items():
            print(f"{name:<16} {' '.join(flags(name)):<120} {c['why']}")
        return 0
    names = list(CANDIDATES) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        parser.error(f"unknown: {' '.join(unknown) or '(none given)'}; choose from all, {', '.join(CANDIDATES)}")
    print(f"machine: {tools.machine.machine_name()}, torch {torch.__version__}", flush=True)
    if args.what == "throughput":
        rows = throughput(names, args.steps)
    else:
        rows = curves(names, args.extra.split(), args.jobs, args.out)
    record(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
