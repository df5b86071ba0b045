"""Performance benchmark: prints each figure beside its target and writes them as JSON.

Run by hand, never by the tests (timings on a shared machine are noisy):

    python benchmarks/bench.py                       # stages 01 and 09 vs the lecture, 3 runs each
    python benchmarks/bench.py --stages all --repeat 1
    python benchmarks/bench.py --only stage10,gflops      (the other figures in results.json are kept)
    python benchmarks/bench.py --only gpu                 (on a CUDA GPU only; not in the default --only)

Figures (the default --only: speed, stage10, gflops, tests; the others are run by hand):
  speed    each stage's full default run against the lecture's loop around the same model
           (benchmarks/lecture_reference.py), in alternating runs: the median wall-time ratio
           (target >= 2x) and the difference of their final val losses (target <= 0.03)
  stage10  stage 10 at its default on this machine: wall time and final val loss (targets on a
           2-core CPU: <= 300 s, val reported; on cuda, the video preset: <= 180 s, val <= 1.48)
  gflops   stage 10's training throughput at the lecture's configuration, against this machine's
           measured fp32 matmul peak
  tests    the wall time of `python -m pytest -q` (target <= 45 s), and of one stage's smoke tests,
           `python -m pytest -q -m stage04` (target <= 10 s)
  gpu      on a CUDA GPU: stage 10 at the lecture's configuration, compiled (GPU_FLAGS), from a cold
           start: wall time, compile time, ms a step, final val loss (target on one H100: <= 120 s,
           val <= 1.50; nanoGPT's train_shakespeare_char took 175 s there)
  nanogpt  with --nanogpt DIR, a checkout of nanoGPT: its README's recipe for a CPU (NANOGPT_CPU) on
           this machine, and the same at NANOGPT_AS_LONG steps, about as long as stage 10's run
  addition exercise 2's worked solution at its defaults (5-digit addition), the answer reversed (seeds
           1337-1346) and in the usual order (1337, 1338), alternating: held-out exact match and
           training seconds (target, reversed: >= 99% within 60 s)
  served   the same, reversed, served the problems without the solution's change to them (SERVED),
           seeds 1337 on (--served_seeds), beside --only addition's figures: what the change buys
  calculator  exercise 2's calculator (+, - and * on 2-digit operands), each attempt in CALCULATOR_ATTEMPTS,
           the ones that miss the target kept too: held-out exact match by operation (target: >= 99%
           each, within 600 s of training)
  heads    ms a training step of stage 10 with exercise 1's three forms of attention (per head, batched
           by hand, F.scaled_dot_product_attention), at the cpu preset and the lecture's configuration
  ex5      characters a second of exercise 5's key-value cache against stage 10's generate, 500 from a
           1-character prompt and inside the first window, at the cpu preset and the lecture's configuration
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import harness  # noqa: E402
import tools.machine  # noqa: E402
import tools.stages  # noqa: E402

FINAL_LOSS = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
NANOGPT_REFERENCE = "nanoGPT config/train_shakespeare_char.py: 175 s, best val 1.4581 (one H100, 2026-11-22)"


def run(cmd: list[str], timeout: float = 3600, env: dict | None = None, cwd: Path = ROOT) -> tuple[float, str]:
    """Run a command from cwd (the project root); return its wall time and stdout (fail loudly)."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stdout


def final_losses(stdout: str) -> tuple[float, float]:
    step, train, val = FINAL_LOSS.findall(stdout)[-1]
    return float(train), float(val)


def bench_speed(stages: list[str], repeat: int) -> list[dict]:
    rows = []
    for stage in stages:
        ours, ref = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeat):  # alternate the two so that machine noise hits both alike
                wall, out = run([sys.executable, f"stages/{stage}.py", "--checkpoint", f"{tmp}/{stage}.pt"])
                ours.append((wall, *final_losses(out)))
                wall, out = run([sys.executable, "benchmarks/lecture_reference.py", stage[:2]])
                ref.append((wall, *final_losses(out)))
                print(
                    f"  {stage} run {i + 1}/{repeat}: stage {ours[-1][0]:.1f} s (val {ours[-1][2]:.4f}), "
                    f"lecture loop {ref[-1][0]:.1f} s (val {ref[-1][2]:.4f})",
                    flush=True,
                )
        ours_wall = statistics.median(w for w, _, _ in ours)
        ref_wall = statistics.median(w for w, _, _ in ref)
        ours_val = statistics.median(v for _, _, v in ours)
        ref_val = statistics.median(v for _, _, v in ref)
        rows.append(
            {
                "figure": f"speed {stage}",
                "stage_wall_s": round(ours_wall, 2),
                "lecture_wall_s": round(ref_wall, 2),
                "speedup": round(ref_wall / ours_wall, 2),
                "stage_val": ours_val,
                "lecture_val": ref_val,
                "val_diff": round(abs(ours_val - ref_val), 4),
                "target": "speedup >= 2.0, val_diff <= 0.03",
                "met": ref_wall / ours_wall >= 2.0 and abs(ours_val - ref_val) <= 0.03,
                "runs": repeat,
            }
        )
    return rows


def bench_stage10() -> dict:
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        wall, out = run([sys.executable, "stages/10_gpt.py", "--checkpoint", f"{tmp}/10.pt"])
    train, val = final_losses(out)
    preset = re.search(r"preset: (\w+)", out)
    # on a CPU the cpu preset (the lecture's recipe, smaller): five minutes, its val loss reported
    limit_s, limit_val = (180, 1.48) if cuda else (300, None)
    return {
        "figure": "stage10 default",
        "device": "cuda" if cuda else "cpu",
        "machine": torch.cuda.get_device_name() if cuda else tools.machine.machine_name(),
        "preset": preset.group(1) if preset else "?",
        "wall_s": round(wall, 1),
        "train": train,
        "val": val,
        "target": f"wall <= {limit_s} s" + (f", val <= {limit_val}" if limit_val else ", val reported"),
        "met": wall <= limit_s and (limit_val is None or val <= limit_val),
    }


GPU_FLAGS = ("--preset", "video", "--compile", "reduce-overhead", "--dtype", "bfloat16")


def bench_gpu(flags: tuple[str, ...] = GPU_FLAGS, device: str = "cuda") -> dict:
    """Stage 10 at the lecture's configuration, compiled, from a cold start: an empty compile cache.

    The stage's own history gives the rest: a step's time is that of a later interval between two
    loss estimates (its steps and one estimate) divided by its steps, and the compile time is what
    the run took up to the second estimate beyond one such interval (the first steps compile and
    record the CUDA graphs; the first estimate compiles the eval graphs).
    """
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: the gpu figure needs a CUDA GPU; run it by hand on one (see docs/performance.md)")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        cmd = [sys.executable, "stages/10_gpt.py", "--device", device, *flags, "--checkpoint", f"{tmp}/10.pt"]
        wall, out = run(cmd, env=env)
        rows = harness.checkpoints.read_history(Path(tmp) / "10.history.csv")
    machine = torch.cuda.get_device_name() if device == "cuda" else tools.machine.machine_name()
    return gpu_figure(rows, out, wall, flags, device, machine)


def gpu_figure(rows: list[dict], out: str, wall: float, flags: tuple[str, ...], device: str, machine: str) -> dict:
    """The GPU figure from a run's history, stdout and wall time."""
    train, val = final_losses(out)
    steps = [r["step"] for r in rows]
    times = [r["elapsed_s"] for r in rows]
    intervals = [(times[i + 1] - times[i]) / (steps[i + 1] - steps[i]) for i in range(1, len(rows) - 1)]
    step_s = statistics.median(intervals[1:] or intervals)  # steady state: after the first, compiling, interval
    compile_s = times[1] - step_s * steps[1] if len(rows) > 2 else float("nan")
    return {
        "figure": f"stage10 lecture config ({device})",
        "device": device,
        "machine": machine,
        "flags": " ".join(flags),
        "wall_s": round(wall, 1),
        "compile_s": round(compile_s, 1),
        "ms_per_step": round(1000 * step_s, 1),
        "train": train,
        "val": val,
        "reference": NANOGPT_REFERENCE,
        "target": "wall <= 120 s from a cold start, val <= 1.50 (one H100)",
        "met": wall <= 120 and val <= 1.50,
    }


# nanoGPT's README: its recipe for a CPU on the same text, as it gives the command
NANOGPT_CPU = (
    "train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
    "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 "
    "--dropout=0.0"
)


NANOGPT_AS_LONG = 5000  # steps of nanoGPT's CPU recipe that take about as long as stage 10's run here


def bench_nanogpt(checkout: Path, steps: int | None = None) -> dict:
    """nanoGPT's CPU recipe, run here from a checkout of its repository (given by hand: it is not part of
    this project), with tiny Shakespeare put where its prepare.py looks first: the whole run's wall time
    and its last estimate. steps: its --max_iters and --lr_decay_iters instead of the README's 2000."""
    if not (checkout / "train.py").exists():
        sys.exit(f"error: --nanogpt {checkout} is not a checkout of nanoGPT (no train.py there)")
    data = checkout / "data" / "shakespeare_char"
    (data / "input.txt").write_bytes(common.DATA_PATH.read_bytes())  # so prepare.py does not download it
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        flags = NANOGPT_CPU.split()
        if steps is not None:
            flags = [f for f in flags if not f.startswith(("--max_iters=", "--lr_decay_iters="))]
            flags += [f"--max_iters={steps}", f"--lr_decay_iters={steps}"]
        cmd = [sys.executable, *flags, f"--out_dir={tmp}"]
        wall, out = run(cmd, cwd=checkout)
    train, val = final_losses(out)
    return {
        "figure": "nanoGPT cpu recipe, run here" + (f", {steps} steps" if steps else ""),
        "command": "python " + " ".join(cmd[1:-1]),
        "wall_s": round(wall, 1),
        "train": train,
        "val": val,
        "target": "reported: the nearest peer's recipe for a CPU, on the same machine",
        "met": True,
    }


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def training_step(stage: ModuleType, cfg) -> tuple[torch.nn.Module, Callable[[], None]]:
    """stage's model at cfg, seeded, and one training step of it on a random batch, as the stages train on a CPU."""
    torch.manual_seed(0)
    model = stage.LanguageModel(65, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, fused=True)
    data = torch.randint(65, (200_000,))
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = common.get_batch(data, cfg.batch_size, cfg.block_size, gen)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def bench_gflops(steps: int = 3) -> dict:
    """Stage 10 at the lecture's configuration on the CPU: model FLOPs per second of training."""
    stage = tools.stages.load_stage("10")
    cfg = stage.Config()
    model, step = training_step(stage, cfg)
    step()  # warm up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    # FLOPs per token: 6 per weight in a matmul (2 forward, 4 backward), plus attention's
    # q.k and wei.v matmuls: 12 * n_layer * n_embd * block_size (the PaLM/nanoGPT estimate).
    # Embedding lookups do no arithmetic, so neither table counts.
    n_matmul = (
        sum(p.numel() for p in model.parameters())
        - model.token_embedding_table.weight.numel()
        - model.position_embedding_table.weight.numel()
    )
    flops_per_token = 6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    achieved = flops_per_token * cfg.batch_size * cfg.block_size / step_s / 1e9
    peak = matmul_peak_gflops()
    return {
        "figure": "stage10 video-config GFLOP/s (cpu)",
        "step_s": round(step_s, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3),
        "target": "report against the measured fp32 matmul peak",
        "met": True,
    }


def bench_heads(rounds: dict[str, tuple[int, int]] | None = None) -> list[dict]:
    """Stage 10's training step with each form of attention, at the cpu preset and the lecture's
    configuration: (rounds, steps a round) each, the forms alternating round by round, medians."""
    from exercises.check import load_learner_file
    from exercises.learner_stage import stage_10_with

    solution = load_learner_file(ROOT / "exercises" / "solutions" / "ex1_causal_self_attention.py")
    forms = {
        "per_head": stage_10_with(None),
        "batched": stage_10_with(solution.CausalSelfAttention),
        "sdpa": stage_10_with(solution.CausalSelfAttentionSDPA),
    }
    rounds = rounds or {"cpu": (3, 5), "video": (2, 1)}
    results = []
    for preset, (n_rounds, steps) in rounds.items():
        presets = forms["per_head"].PRESETS
        trainers = {name: training_step(stage, stage.Config(**presets[preset]))[1] for name, stage in forms.items()}
        ms = {name: [] for name in forms}
        for r in range(n_rounds + 1):  # round 0 warms up
            for name, step in trainers.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                if r:
                    ms[name].append((time.perf_counter() - t0) / steps * 1000)
            print(
                f"heads, preset {preset}, round {r}: " + ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in ms.items() if v),
                flush=True,
            )
        med = {name: statistics.median(v) for name, v in ms.items()}
        results.append(
            {
                "figure": f"stage10 attention forms, preset {preset} (ms a training step)",
                "per_head_ms": round(med["per_head"], 1),
                "batched_ms": round(med["batched"], 1),
                "sdpa_ms": round(med["sdpa"], 1),
                "batched_speedup": round(med["per_head"] / med["batched"], 2),
                "sdpa_speedup": round(med["per_head"] / med["sdpa"], 2),
                "rounds_x_steps": f"{n_rounds} x {steps}",
                "target": "reported",
                "met": True,
            }
        )
    return results


def stamped_generate(model: torch.nn.Module, characters: int) -> tuple[torch.Tensor, list[float], float]:
    """model.generate from a 1-character prompt, seeded: its output, the seconds from its start to each
    step's logits (read where every generate hands them to common.adjust_logits), and its seconds in all."""
    stamps, adjust_logits = [], common.adjust_logits

    def stamped(*args, **kwargs):
        stamps.append(time.perf_counter())
        return adjust_logits(*args, **kwargs)

    common.adjust_logits = stamped
    try:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        out = model.generate(torch.zeros((1, 1), dtype=torch.long), characters)
        end = time.perf_counter()
    finally:
        common.adjust_logits = adjust_logits
    return out, [t - t0 for t in stamps], end - t0


def bench_kv_cache(characters: int = 500, rounds: int = 2) -> list[dict]:
    """Exercise 5's worked solution against stage 10's generate, on the same random weights, the two
    alternating round by round (after a short warm-up): medians of characters a second, over all the
    characters and over the first window's."""
    from exercises.check import load_learner_file

    solution = load_learner_file(ROOT / "exercises" / "solutions" / "ex5_kv_cache.py")
    stage = tools.stages.load_stage("10_gpt")
    results = []
    for preset in ("cpu", "video"):
        cfg = stage.Config(**stage.PRESETS[preset])
        torch.manual_seed(0)
        models = {"stage10": stage.LanguageModel(65, cfg).eval()}
        models["cached"] = solution.CachedLanguageModel(65, cfg).eval()
        models["cached"].load_state_dict(models["stage10"].state_dict())
        rates = {name: {"all": [], "window": []} for name in models}
        outputs = {}
        for r in range(rounds + 1):  # round 0 warms up, with a few characters
            for name, model in models.items():
                out, to_step, seconds = stamped_generate(model, characters if r else 5)
                if r:
                    outputs.setdefault(name, out)
                    rates[name]["all"].append(characters / seconds)
                    rates[name]["window"].append(cfg.block_size / to_step[cfg.block_size - 1])
            print(
                f"kv cache, preset {preset}, round {r}: "
                + ", ".join(f"{n} {v['all'][-1]:.1f} chars/s" for n, v in rates.items() if v["all"]),
                flush=True,
            )
        med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in rates.items()}
        results.append(
            {
                "figure": f"exercise 5: key-value cache, preset {preset} (characters a second)",
                "block_size": cfg.block_size,
                "characters": characters,
                "stage10_chars_per_s": round(med["stage10"]["all"], 1),
                "cached_chars_per_s": round(med["cached"]["all"], 1),
                "speedup": round(med["cached"]["all"] / med["stage10"]["all"], 2),
                "first_window_stage10_chars_per_s": round(med["stage10"]["window"], 1),
                "first_window_cached_chars_per_s": round(med["cached"]["window"], 1),
                "first_window_speedup": round(med["cached"]["window"] / med["stage10"]["window"], 2),
                "same_text": torch.equal(outputs["stage10"], outputs["cached"]),
                "threads": torch.get_num_threads(),
                "rounds": rounds,
                "target": "reported",
                "met": True,
            }
        )
    return results


EX2_SOLUTION = ROOT / "exercises" / "solutions" / "ex2_addition.py"
ACCURACY = re.compile(r"held-out exact match \(([\d,]+) problems of each operation\): (.*)")
TRAINED = re.compile(r"\(step (\d+), ([\d.]+) s of training\)")
# the calculator's attempts, in the order they were tried: a name, and the flags beside --digits 2 --operations +-*
CALCULATOR_SIZES = ["--n_layer", "4", "--batch_size", "128", "--max_iters", "4000", "--eval_interval", "2000"]
CALCULATOR_ATTEMPTS = {
    "plain answers": CALCULATOR_SIZES,
    "partial products before the answer (--trace)": [*CALCULATOR_SIZES, "--trace"],
}


def exercise_2(flags: list[str]) -> dict:
    """One training run of exercise 2's solution into a temporary checkpoint: its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(EX2_SOLUTION), *flags, "--checkpoint", str(Path(tmp) / "ex2.pt")]
        wall, out = run(cmd)
    problems, by_op = ACCURACY.findall(out)[-1]
    steps, seconds = TRAINED.findall(out)[-1]
    accuracy = {op: float(v) for op, v in re.findall(r"([-+*]) ([\d.]+)%", by_op)}
    print(f"  {' '.join(flags) or '(defaults)'}: {by_op}, {seconds} s of training, {wall:.0f} s in all", flush=True)
    return {"accuracy_pct": accuracy, "steps": int(steps), "train_s": float(seconds), "wall_s": round(wall, 1)}


def bench_addition(rounds: int = 10, usual_rounds: int = 2) -> list[dict]:
    """5-digit addition at the solution's defaults, reversed (seeds 1337 on, rounds of them) and in
    the usual order (the first usual_rounds seeds), alternating."""
    runs = {"reversed": [], "usual order": []}
    for r in range(rounds):
        for order, flags in (("reversed", []), ("usual order", ["--no-reverse"])):
            if order == "usual order" and r >= usual_rounds:
                continue
            print(f"addition, {order}, round {r + 1}:", flush=True)
            runs[order].append(exercise_2([*flags, "--seed", str(1337 + r)]))
    results = []
    for order, figures in runs.items():
        accuracy = [f["accuracy_pct"]["+"] for f in figures]
        seconds = [f["train_s"] for f in figures]
        target = "reversed: >= 99% held-out within 60 s of training" if order == "reversed" else "reported"
        results.append(
            {
                "figure": f"exercise 2: 5-digit addition, answer {order}",
                "accuracy_pct": accuracy,
                "train_s": seconds,
                "steps": figures[0]["steps"],
                "seeds": [1337 + r for r in range(len(figures))],
                "target": target,
                "met": min(accuracy) >= 99 and max(seconds) <= 60 if order == "reversed" else True,
            }
        )
    return results


# the problems served in training without the solution's change to them: a name, and the flags
SERVED = {"each operand uniform over all 5-digit numbers, no carrying sums": ["--no-carry_heavy"]}
SERVED_FIGURE = "exercise 2: 5-digit addition reversed, with and without carrying sums early"
ADDITION_REVERSED = "exercise 2: 5-digit addition, answer reversed"


def bench_served(defaults: dict, seeds: int = 10) -> dict:
    """5-digit addition, reversed, at the solution's defaults but for the problems served (SERVED),
    seeds 1337 on, each seed through every recipe in turn; beside them the defaults' own figures
    (defaults: the reversed addition entry, measured at the same steps)."""
    runs: dict[str, list[dict]] = {name: [] for name in SERVED}
    for seed in range(1337, 1337 + seeds):
        for name, flags in SERVED.items():
            print(f"served, {name}, seed {seed}:", flush=True)
            runs[name].append(exercise_2([*flags, "--seed", str(seed)]))
    recipes = [
        {
            "name": name,
            "flags": " ".join(SERVED[name]),
            "accuracy_pct": [f["accuracy_pct"]["+"] for f in figures],
            "train_s": [f["train_s"] for f in figures],
        }
        for name, figures in runs.items()
    ]
    steps = {f["steps"] for figures in runs.values() for f in figures}
    if defaults["seeds"][:seeds] != list(range(1337, 1337 + seeds)) or steps != {defaults["steps"]}:
        sys.exit(f"error: the served figures need {ADDITION_REVERSED!r} at their seeds and steps: --only addition")
    recipes.append(
        {
            "name": "carrying sums early, fading out (carry_heavy, the default)",
            "flags": "",
            "accuracy_pct": defaults["accuracy_pct"][:seeds],
            "train_s": defaults["train_s"][:seeds],
            "from": ADDITION_REVERSED,
        }
    )
    for r in recipes:
        r["reached_99"] = sum(a >= 99 for a in r["accuracy_pct"])
    return {
        "figure": SERVED_FIGURE,
        "command": "python exercises/solutions/ex2_addition.py --seed SEED FLAGS",
        "seeds": list(range(1337, 1337 + seeds)),
        "steps": defaults["steps"],
        "recipes": recipes,
        "target": "reported: the seeds that reach 99% held-out with and without the change",
        "met": True,
    }


def bench_calculator() -> list[dict]:
    """Each attempt at the calculator: + - * on 2-digit operands, one model."""
    results = []
    for name, flags in CALCULATOR_ATTEMPTS.items():
        print(f"calculator, {name}:", flush=True)
        figures = exercise_2(["--digits", "2", "--operations", "+-*", *flags])
        results.append(
            {
                "figure": f"exercise 2: calculator, {name}",
                "flags": " ".join(flags),
                **figures,
                "target": ">= 99% held-out on each operation within 600 s of training",
                "met": min(figures["accuracy_pct"].values()) >= 99 and figures["train_s"] <= 600,
            }
        )
    return results


def bench_tests() -> list[dict]:
    """The whole suite, and one stage's smoke tests, as the README gives the commands."""
    rows = []
    for name, select, limit in (("test suite", [], 45), ("one stage's tests (stage 04)", ["-m", "stage04"], 10)):
        t0 = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        summary = (done.stdout.strip().splitlines() or ["?"])[-1]
        rows.append(
            {
                "figure": name,
                "wall_s": round(wall, 1),
                "summary": summary,
                "target": f"<= {limit} s, all passing",
                "met": wall <= limit and done.returncode == 0,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--stages", default="01,09", help="stages for the speed figure: numbers (01,09) or 'all' of 01-09"
    )
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs per stage; the medians are reported")
    parser.add_argument("--only", default="speed,stage10,gflops,tests", help="which figures, comma-separated")
    parser.add_argument("--nanogpt", type=Path, default=None, help="for --only nanogpt: a checkout of nanoGPT")
    parser.add_argument("--served_seeds", type=int, default=10, help="seeds of the served figure, from 1337")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results.json", help="where to write the JSON"
    )
    args = parser.parse_args()
    if not common.DATA_PATH.exists():
        sys.exit("error: the benchmark needs data/input.txt: run `python stages/01_bigram.py` once to download it")

    names = [p.stem for p in tools.stages.stage_files()][:9]
    stages = (
        names if args.stages == "all" else [n for n in names if n[:2] in {s.zfill(2) for s in args.stages.split(",")}]
    )
    only = set(args.only.split(","))
    print(
        f"machine: {tools.machine.machine_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    results = []
    if "speed" in only:
        results += bench_speed(stages, args.repeat)
    if "stage10" in only:
        results.append(bench_stage10())
    if "gflops" in only:
        results.append(bench_gflops())
    if "gpu" in only:
        results.append(bench_gpu())
    if "heads" in only:
        results += bench_heads()
    if "ex5" in only:
        results += bench_kv_cache()
    if "addition" in only:
        results += bench_addition()
    if "served" in only:
        measured = [r for r in results if r["figure"] == ADDITION_REVERSED]
        recorded = [r for r in merged(args.out, []) if r["figure"] == ADDITION_REVERSED]
        results.append(bench_served((measured or recorded)[0], args.served_seeds))
    if "calculator" in only:
        results += bench_calculator()
    if "nanogpt" in only:
        if args.nanogpt is None:
            sys.exit("error: --only nanogpt needs --nanogpt DIR, a checkout of github.com/karpathy/nanoGPT")
        results.append(bench_nanogpt(args.nanogpt))
        results.append(bench_nanogpt(args.nanogpt, NANOGPT_AS_LONG))
    if "tests" in only:
        results += bench_tests()

    print()
    for r in results:
        figures = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("figure", "target", "met"))
        print(f"{r['figure']:<36} {figures}\n{'':<36} target: {r['target']}  ->  {'met' if r['met'] else 'NOT met'}")
    today = time.strftime("%Y-%m-%d")
    record = {"machine": tools.machine.machine_name(), "torch": torch.__version__, "date": today}
    record["results"] = merged(args.out, [{**r, "date": today} for r in results])
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out} ({len(results)} of its {len(record['results'])} figures from this run)")
    return 0


def merged(path: Path, new: list[dict]) -> list[dict]:
    """The figures already in path, with those measured now replacing their namesakes: a run with
    --only keeps the rest. A file that is missing or not ours starts afresh."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError, TypeError):
        old = []
    fresh = {r["figure"]: r for r in new}
    kept = [fresh.pop(r["figure"], r) for r in old if isinstance(r, dict) and "figure" in r]
    return kept + list(fresh.values())


if __name__ == "__main__":
    sys.exit(main())
