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
import contextlib
import dataclasses
import importlib.util

import torch
import torch._functorch.config  # not imported by `import torch`; backward_compiled_with_forward patches it
from tqdm import tqdm

from harness.errors import first_line

# What `python stages/NN.py` does without --fast: off, because the fast path has not been measured on
# a GPU; "auto" would use it on every CUDA GPU that can run it
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
                with backward_compiled_with_forward():
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


def backward_compiled_with_forward() -> contextlib.AbstractContextManager:
    """torch.compile compiles the backward pass lazily, at the first loss.backward() in the stage's
    loop, where a compiler failure would be a traceback. Within this, it compiles the backward pass
    in the forward call, where Accelerated catches a failure. Torch's setting is patched for the call
    alone, so nothing else in the process sees it. (Older versions of torch lack the setting: there
    the backward pass stays lazy.)"""
    config = torch._functorch.config
    if not hasattr(config, "force_non_lazy_backward_lowering"):
        return contextlib.nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


@contextlib.contextmanager
def float32_matmul_precision(plan: Plan):
    """Within this, fp32 matmuls use TensorFloat-32 where the plan says (10 mantissa bits instead of
    23, on a GPU's tensor cores); after it, torch's precision is what it was before."""
    before = torch.get_float32_matmul_precision()
    if plan.tf32:
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def wrap(model: torch.nn.Module, plan: Plan, device: torch.device) -> torch.nn.Module:
    """The model to train with: model itself, or model wrapped as the plan says."""
    if plan.note:
        print(plan.note)
    if plan.compile_mode is None and plan.dtype == torch.float32:
        return model
    return Accelerated(model, plan, device.type)
