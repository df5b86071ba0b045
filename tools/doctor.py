"""Is it right on my machine? What is here, whether each accelerator computes what the CPU computes,
how fast a step is, and a report to paste when asking for help.

    python tools/doctor.py            # every device here (under a minute on a CPU-only machine)
    python tools/doctor.py --quick    # skip the timings

Each finding is one line: "ok", "note" or "PROBLEM", with what to do when something is off. The exit
status is 1 when a device is unusable (it computes something else than the CPU, turns nan, or fails).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402
import harness  # noqa: E402
import harness.cli  # noqa: E402
import tools.stages  # noqa: E402

# float32 on two devices sums the same products in another order: differences of this size are rounding
TOLERANCE = {"logits": 1e-3, "loss": 1e-4, "gradients": 1e-3, "training": 1e-3}
TRAIN_STEPS = 30
VOCAB = 65
COMPILE_TIMEOUT_S = 120


@dataclasses.dataclass
class Finding:
    verdict: str  # "ok", "note" or "PROBLEM"
    text: str

    def line(self) -> str:
        return f"{self.verdict:>7}  {self.text}"


# -- what is here ---------------------------------------------------------------------------------


def machine_findings() -> list[Finding]:
    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else "CPU only (no CUDA in this build)"
    said = [
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, {build}",
        f"CPU: {torch.get_num_threads()} threads for torch",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            triton = importlib.util.find_spec("triton") is not None
            said.append(
                f"cuda:{i}: {p.name}, compute {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
                f"bfloat16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, Triton {'yes' if triton else 'no'}"
            )
    elif cuda:
        said.append("this torch is built for CUDA, but no CUDA GPU is visible (driver? CUDA_VISIBLE_DEVICES?)")
    mps_built, mps_ok = torch.backends.mps.is_built(), torch.backends.mps.is_available()
    if mps_built or platform.system() == "Darwin":
        said.append(f"mps: built {'yes' if mps_built else 'no'}, available {'yes' if mps_ok else 'no'}")
    chosen = common.choose_device()
    why = {"cuda": "a CUDA GPU is available", "mps": "no CUDA GPU, and Apple's mps is available"}
    said.append(f"--device auto picks {chosen.type}: {why.get(chosen.type, 'neither cuda nor mps is available')}")
    return [Finding("note", text) for text in said]


def accelerators() -> list[torch.device]:
    devices = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    return devices


# -- does the accelerator compute what the CPU computes? ------------------------------------------


@dataclasses.dataclass
class Results:
    """What one device computed for the same model, weights and batches."""

    logits: torch.Tensor
    loss: float
    gradients: dict[str, torch.Tensor]
    training: list[float]  # the losses of TRAIN_STEPS steps from the same start
    samples: torch.Tensor  # ids drawn by torch.multinomial from a distribution with zeros in it


def compute(device: torch.device, **sizes) -> Results:
    """Stage 10's model at the cpu preset's size (or sizes) on device: a forward and backward pass,
    a short run of training, and draws from torch.multinomial; everything brought back to the CPU."""
    stage = tools.stages.load_stage("10")
    # dropout off: its random draws differ from device to device, and the runs must be comparable
    cfg = stage.Config(**{**stage.PRESETS["cpu"], "dropout": 0.0, **sizes})
    torch.manual_seed(0)
    model = stage.LanguageModel(VOCAB, cfg).to(device)
    data = torch.randint(VOCAB, (20_000,), generator=torch.Generator().manual_seed(0))
    batches = torch.Generator().manual_seed(1)
    x, y = common.get_batch(data, 8, cfg.block_size, batches)
    logits, loss = model(x.to(device), y.to(device))
    loss.backward()
    gradients = {n: p.grad.detach().cpu() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    training = []
    for _ in range(TRAIN_STEPS):
        xb, yb = common.get_batch(data, 8, cfg.block_size, batches)
        _, step_loss = model(xb.to(device), yb.to(device))
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        training.append(step_loss.item())
    probs = torch.zeros(4, VOCAB)
    probs[:, :10] = 0.1  # ids 10 and above have probability 0: they must never be drawn
    samples = torch.multinomial(probs.to(device), 200, replacement=True).cpu()
    return Results(logits.detach().cpu(), loss.item(), gradients, training, samples)


def parity(name: str, run: Callable[[], Results], reference: Results) -> list[Finding]:
    """The findings for one device: what it computed against the CPU's reference."""
    try:
        mine = run()
    except Exception as e:  # noqa: BLE001 (whatever the device raises is the finding)
        return [
            Finding(
                "PROBLEM",
                f"{name} fails to run stage 10's model ({harness.errors.first_line(e)}): train with --device cpu",
            )
        ]
    numbers = [mine.logits, torch.tensor(mine.loss), torch.tensor(mine.training), *mine.gradients.values()]
    if not all(torch.isfinite(t).all() for t in numbers):
        said = f"{name} turns nan or inf where the CPU does not: train with --device cpu, or try a newer torch"
        return [Finding("PROBLEM", said)]
    gaps = {
        "logits": (mine.logits - reference.logits).abs().max().item(),
        "loss": abs(mine.loss - reference.loss),
        "gradients": max((g - reference.gradients[k]).abs().max().item() for k, g in mine.gradients.items()),
        "training": max(abs(a - b) / abs(b) for a, b in zip(mine.training, reference.training, strict=True)),
    }
    found = []
    for what, gap in gaps.items():
        limit = TOLERANCE[what]
        label = f"the losses of {TRAIN_STEPS} training steps (relative)" if what == "training" else f"the {what}"
        if gap > limit:
            said = f"{name} differs from the CPU by {gap:.1e} in {label} (allowed {limit:g}): "
            found.append(Finding("PROBLEM", said + "train with --device cpu, or try a newer torch"))
        else:
            said = f"{name} computes what the CPU computes: {label} within {gap:.1e} (allowed {limit:g})"
            found.append(Finding("ok", said))
    bad = mine.samples[(mine.samples < 0) | (mine.samples >= 10)]
    if bad.numel():
        said = f"{name}'s torch.multinomial drew ids of probability 0 ({bad[:3].tolist()}): sample with --device cpu"
        found.append(Finding("PROBLEM", said))
    else:
        found.append(Finding("ok", f"{name}'s torch.multinomial draws only ids that have a probability"))
    return found


# -- how fast ---------------------------------------------------------------------------------------


def ms_a_step(device: torch.device, preset: str, steps: int) -> float:
    stage = tools.stages.load_stage("10")
    cfg = stage.Config(**stage.PRESETS[preset])
    torch.manual_seed(0)
    model = stage.LanguageModel(VOCAB, cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    data = torch.randint(VOCAB, (100_000,)).to(device)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = common.get_batch(data, cfg.batch_size, cfg.block_size, gen)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the device

    step()  # warm up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps * 1000


def speed_findings(devices: list[torch.device]) -> list[Finding]:
    presets = tools.stages.load_stage("10").PRESETS
    found = []
    for device in devices:
        for preset in ("cpu", "video"):
            steps = 1 if preset == "video" and device.type == "cpu" else 5
            ms = ms_a_step(device, preset, steps)
            full = ms * presets[preset].get("max_iters", 5000) / 1000 / 60
            said = (
                f"{device}: {ms:,.0f} ms a training step at the {preset} preset: a full run about {full:,.0f} minutes"
            )
            found.append(Finding("note", said))
    return found


def memory_estimate_gib(cfg) -> float:
    """A rough estimate of the memory one training step of stage 10 needs at cfg: the weights
    with their gradients and AdamW's two moments (16 bytes a parameter), and the activations that
    the backward pass keeps: per layer about 20 numbers per position and channel, and three
    (T, T) tables per head (the scores, their softmax, its dropout)."""
    c, t, b, layers = cfg.n_embd, cfg.block_size, cfg.batch_size, cfg.n_layer
    params = 12 * layers * c * c + (VOCAB + t) * c + VOCAB * c  # blocks, embedding tables, the head
    activations = layers * (20 * b * t * c + 3 * cfg.n_head * b * t * t)
    return (16 * params + 4 * activations) / 2**30


def memory_findings() -> list[Finding]:
    stage = tools.stages.load_stage("10")
    found = []
    for preset in ("cpu", "video"):
        gib = memory_estimate_gib(stage.Config(**stage.PRESETS[preset]))
        said = f"stage 10 at the {preset} preset needs roughly {gib:.1f} GiB a training step (an estimate)"
        found.append(Finding("note", said))
    return found


# -- torch.compile on a GPU ------------------------------------------------------------------------------

SMOKE = "import torch; f = torch.compile(lambda x: (x * 2).sum()); print(float(f(torch.ones(8, device='cuda'))))"


def compile_smoke(command: list[str], timeout: float = COMPILE_TIMEOUT_S) -> Finding:
    """torch.compile on a tiny function, in a subprocess that may not outlive timeout."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Finding("PROBLEM", f"a tiny torch.compile did not finish in {timeout:g} s: train without --compile")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1][:160]
        return Finding("PROBLEM", f"a tiny torch.compile fails ({last}): train without --compile")
    return Finding("ok", "a tiny torch.compile works: --compile can run")


# -- the whole check --------------------------------------------------------------------------------


def doctor_main(argv: list[str] | None) -> int:
    parser = harness.cli.Parser(prog="python tools/doctor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the timings")
    args = parser.parse_args(argv)
    findings: list[Finding] = []

    def say(new: list[Finding]) -> None:
        for finding in new:
            print(finding.line(), flush=True)
        findings.extend(new)

    say(machine_findings())
    devices = accelerators()
    if devices:
        reference = compute(torch.device("cpu"))
        for device in devices:
            say(parity(str(device), lambda d=device: compute(d), reference))
    else:
        say(
            [
                Finding(
                    "note", "no accelerator here: the stages train on the CPU, and there is nothing to compare with it"
                )
            ]
        )
    say(memory_findings())
    if torch.cuda.is_available():
        say([compile_smoke([sys.executable, "-c", SMOKE])])
    else:
        say([Finding("note", "no CUDA GPU: --compile and --dtype bfloat16 pay off only on one")])
    if not args.quick:
        say(speed_findings([torch.device("cpu"), *devices]))
    problems = [f for f in findings if f.verdict == "PROBLEM"]
    print("\nto paste into a question:", "```", *(finding.line() for finding in findings), "```", sep="\n")
    print(f"{len(problems)} problem(s)" if problems else "no problems found")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(doctor_main, argv)


if __name__ == "__main__":
    sys.exit(main())
