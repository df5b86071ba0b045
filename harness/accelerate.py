"""Training faster on a GPU without touching the lesson: the same model, compiled and in bfloat16.

On a GPU the lecture's model (one module per head) is bound by kernel launches, not arithmetic: a
stage-10 step is hundreds of small kernels. The fast path (--fast) records each step's kernels as
CUDA graphs (torch.compile's "reduce-overhead" mode) and replays them with one launch, under
bfloat16 autocast where the GPU supports it and TF32 matmuls for the rest. --compile and --dtype
remain for trying the pieces one at a time (with --fast on a GPU they are ignored, and it says so).
On a CPU none of this pays: compiling costs more time than it saves there (measured: 39 s to
compile stage 09, which then ran 5.6 ms a step instead of 9).

Checkpoints never see any of it: the trainer keeps the plain model, so a checkpoint written by an
accelerated run loads anywhere, a CPU included.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util

import torch
import torch._functorch.config  # not imported by `import torch`; compile_backward_with_forward sets it
from tqdm import tqdm

from harness.errors import first_line

# What `python stages/NN.py` does without --fast. "auto" (the fast path on a CUDA GPU that can run it)
# once it has been measured on a GPU: until then the fast path waits behind --fast (issue 12)
FAST_DEFAULT = "off"
TRITON_MIN_CAPABILITY = (7, 0)  # torch.compile's GPU kernels are written in Triton, which needs a Volta or newer
COMPILING_CALLS = 3  # the first calls in each mode compile, then warm up and record the CUDA graphs


@dataclasses.dataclass
class Plan:
    """How to run the model: compile mode (None: eager), autocast dtype, TF32, and why, in one line."""

    compile_mode: str | None = None
    dtype: torch.dtype = torch.float32
    tf32: bool = False
    note: str = ""  # printed when not empty: what the run does, or why it falls back


@dataclasses.dataclass
class Gpu:
    """What the fast path needs to know of a CUDA GPU (a stand-in in the tests)."""

    name: str
    capability: tuple[int, int]
    bf16: bool
    triton: bool


def this_gpu() -> Gpu:
    return Gpu(
        name=torch.cuda.get_device_name(),
        capability=torch.cuda.get_device_capability(),
        bf16=torch.cuda.is_bf16_supported(),
        triton=importlib.util.find_spec("triton") is not None,
    )


def plan_fast_path(fast: str, device_type: str, gpu: Gpu | None) -> Plan:
    """--fast auto|on|off on this device: the plan, with one line that says why when it falls back."""
    if fast == "off":
        return Plan()
    if device_type != "cuda":
        if fast == "auto":
            return Plan()  # on a CPU (or mps) nothing changes, and nothing needs saying
        return Plan(note=f"--fast: the fast path is for CUDA GPUs; on {device_type} it changes nothing")
    if fast == "auto" and not gpu.triton:
        return Plan(note="fast path off: Triton is not installed (pip install triton); --fast on tries anyway")
    if fast == "auto" and gpu.capability < TRITON_MIN_CAPABILITY:
        old = "{} (compute {}.{}) is older than Triton supports".format(gpu.name, *gpu.capability)
        return Plan(note=f"fast path off: {old}; --fast on tries anyway")
    dtype = torch.bfloat16 if gpu.bf16 else torch.float32
    precision = "bfloat16" if gpu.bf16 else f"float32 ({gpu.name} has no bfloat16)"
    note = f"fast path: CUDA graphs (torch.compile, reduce-overhead), {precision}, TF32 matmuls; first steps compile"
    if fast == "auto":
        note += "; --fast off runs without it"
    return Plan(compile_mode="reduce-overhead", dtype=dtype, tf32=True, note=note)


def plan_for(args: argparse.Namespace, device: torch.device) -> Plan:
    """The plan for this command line: --fast, else --compile and --dtype as given."""
    fast = plan_fast_path(args.fast, device.type, this_gpu() if device.type == "cuda" and args.fast != "off" else None)
    if fast.compile_mode is not None:
        if args.compile or args.dtype != "float32":
            fast.note += "; --compile and --dtype are ignored with it"
        return fast
    return Plan(compile_mode="default" if args.compile else None, dtype=getattr(torch, args.dtype), note=fast.note)


class Accelerated(torch.nn.Module):
    """Calls a model compiled and/or under autocast, as the plan says.

    A compile that fails (a missing compiler, an unsupported GPU) fails in the first calls in each
    mode (training, eval): then this says so in one line and runs the model as it is from there on.
    """

    def __init__(self, model: torch.nn.Module, plan: Plan, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.compiled = None
        if plan.compile_mode:
            compile_backward_with_forward()
            # dynamic=False: one graph for the training batch's shape, one for the estimate's
            self.compiled = torch.compile(model, mode=plan.compile_mode, dynamic=False)
        self.cuda_graphs = plan.compile_mode == "reduce-overhead"
        self.dtype, self.device_type = plan.dtype, device_type
        self._calls = {True: 0, False: 0}  # calls of the compiled model in training / in eval mode

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.compiled is None:
                return self.model(idx, targets)
            if self.cuda_graphs:  # outputs of the last replay may be overwritten from here on: a new step
                torch.compiler.cudagraph_mark_step_begin()
            try:
                out = self.compiled(idx, targets)
            except torch.OutOfMemoryError:
                raise  # too big for the GPU, compiled or not: the model as it is would fail too
            except Exception as e:  # noqa: BLE001 (any compiler failure: the model as it is still works)
                if self._calls[self.training] >= COMPILING_CALLS:
                    raise  # it compiled and ran before: this is not a compile failure
                tqdm.write(f"torch.compile failed ({first_line(e)}); training without it")
                self.compiled = None
                return self.model(idx, targets)
            self._calls[self.training] += 1
            return out


def compile_backward_with_forward() -> None:
    """torch.compile compiles the backward pass lazily, at the first loss.backward() in the stage's
    loop, where a compiler failure would be a traceback. This moves it into the first forward call,
    where Accelerated catches it. (Older versions of torch lack the setting: then it stays lazy.)"""
    try:
        torch._functorch.config.force_non_lazy_backward_lowering = True
    except AttributeError:
        pass


def accelerate(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model to train with: model itself, or model wrapped as the plan for this run says."""
    plan = plan_for(args, device)
    if plan.note:
        print(plan.note)
    if plan.tf32:  # TensorFloat-32: fp32 matmuls on tensor cores, 10 mantissa bits instead of 23
        torch.set_float32_matmul_precision("high")
    if plan.compile_mode is None and plan.dtype == torch.float32:
        return model
    return Accelerated(model, plan, device.type)
