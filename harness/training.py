"""The bookkeeping around a stage's training loop, which the stage itself keeps in view:

trainer = harness.Trainer(run, model, optimizer)   # loads a checkpoint; compiles with --compile
for step in trainer.steps():                       # a progress bar; Ctrl-C stops cleanly
    trainer.log_estimate(step, losses)             # after a loss estimate: print, save
    ... the stage's own step, its forward pass in `with trainer.autocast():` ...
    trainer.count_step(loss)                       # after each step: progress, nan check
trainer.finish()                                   # save, judge the loss, print a sample
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

import common
from harness import checkpoints
from harness.cli import Run
from harness.errors import Stopped, StopSignals, UserError, describe


def read_interval(device: torch.device) -> int:
    """Steps between reads of the loss: on a GPU, loss.item() waits for every kernel queued so far."""
    return 1 if device.type == "cpu" else 10


def empty_prompt(tokenizer: common.CharTokenizer) -> str:
    """What generation starts from without --prompt: a newline, where lines start (a text without one: id 0)."""
    return "\n" if "\n" in tokenizer.stoi else tokenizer.chars[0]


class Trainer:
    """Owns the model while it trains: its checkpoint, its steps, stopping, saving and the closing sample."""

    def __init__(self, run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.run, self.model, self.optimizer = run, model, optimizer
        self.step = 0  # optimizer steps completed
        self.history: list[dict[str, float]] = []  # one row per loss estimate
        self.elapsed = 0.0  # training seconds before this process (from the checkpoint)
        self.saved_step: int | None = None  # the step of the checkpoint on disk, written by this run
        self._t0 = time.perf_counter()
        self._bar: tqdm | None = None
        self._signals = StopSignals()
        self._read_interval = read_interval(run.device)
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
        if (ckpt := run.checkpoint) is not None:
            checkpoints.load_weights(model, ckpt, run.checkpoint_path, run.config)
            self.step, self.history, self.elapsed = ckpt.step, list(ckpt.history), ckpt.elapsed
            if run.args.resume:  # the optimizer's state and every random-number generator, as saved
                optimizer.load_state_dict(ckpt.optimizer)
                for group in optimizer.param_groups:  # the state brings the old rate back: this run's wins
                    group["lr"] = run.config.learning_rate
                run.train_gen.set_state(ckpt.rng["batches"])
                run.eval_gen.set_state(ckpt.rng["eval"])
                torch.set_rng_state(ckpt.rng["torch"])
                if torch.cuda.is_available() and len(ckpt.rng["cuda"]) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(ckpt.rng["cuda"])
                if ckpt.rng.get("mps") is not None and torch.backends.mps.is_available():
                    torch.mps.set_rng_state(ckpt.rng["mps"])
                self.saved_step = ckpt.step  # the checkpoint on disk, kept if anything goes wrong
                print(f"resumed from {run.checkpoint_path} at step {self.step}")
        elif (source := run.init_checkpoint) is not None:  # the weights alone; optimizer, step and history start afresh
            checkpoints.load_weights(model, source, run.args.init_from, run.config, sizes_from_flags=True)
            val = f", val loss {source.history[-1]['val_loss']:.4f}" if source.history else ""
            print(f"initialised from {run.args.init_from} (step {source.step}{val}): fresh optimizer, step 0")
        self._first_step = self.step
        if run.args.compile and not run.args.sample:
            # compiled in place: the same module, so its state_dict (and each checkpoint) keeps plain names
            model.compile(mode=run.args.compile)
            print(f"torch.compile (mode {run.args.compile}): the first steps and estimates compile")

    @property
    def trained(self) -> bool:  # whether this process took a step: only then is there anything new to save
        return self.step > self._first_step

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass in bfloat16 where it is safe (--dtype bfloat16); otherwise nothing changes."""
        bf16 = self.run.args.dtype == "bfloat16"
        return torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=bf16)

    def steps(self) -> Iterator[int]:
        """Step numbers from the checkpoint's step (0 when fresh) to max_iters - 1; none with --sample. A stop
        signal waits for the step to end; then the checkpoint is saved, and the last line says how to resume."""
        max_iters, path = self.run.config.max_iters, self.run.checkpoint_path
        if self.run.args.sample:
            return
        if self.step >= max_iters:
            print(f"the checkpoint is already at step {self.step}; raise --max_iters to train further")
            return
        self._bar = tqdm(total=max_iters, initial=self.step, desc=self.run.stage, unit="step", disable=None)
        with self._bar, self._signals as signals:
            for step in range(self.step, max_iters):
                # an estimate at this step draws the same batches however the run got here: one seed for
                # each (seed, step), since the seed is below 2**32
                self.run.eval_gen.manual_seed(self.run.args.seed + 1 + step * 2**32)
                yield step  # the stage's loop body runs here: one optimizer step
                self.step = step + 1
                if signals.received is not None:
                    self.save()
                    said = f"stopped by {describe(signals.received)} at step {self.step}: saved {path}"
                    raise Stopped(signals.received, f"{said}; continue with the same command plus --resume")

    def count_step(self, loss: torch.Tensor) -> None:
        """After an optimizer step: count it, and every read_interval steps read the loss: nan stops the run."""
        self._bar.update(1)
        if (self.step + 1) % self._read_interval == 0:
            if not math.isfinite(value := loss.item()):
                raise self._non_finite_error(f"the training loss became {value} at step {self.step + 1}")
            self._bar.set_postfix(loss=f"{value:.4f}", refresh=False)

    def _non_finite_error(self, what: str) -> UserError:
        """The error for a nan or inf: says which checkpoint is kept, and what to do."""
        path = self.run.checkpoint_path
        kept = f"{path} (step {self.saved_step}) is kept" if self.saved_step is not None else "nothing was saved"
        return UserError(f"{what}; training stopped and {kept}. Lower --learning_rate and train again")

    def log_estimate(self, step: int, losses: dict[str, float]) -> None:
        """Print a loss estimate, add it to the history, and save a checkpoint."""
        if not all(math.isfinite(v) for v in losses.values()):
            nan = f"{losses['train']} (train), {losses['val']} (val)"
            raise self._non_finite_error(f"the estimated loss became {nan} at step {step}")
        tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "elapsed_s": self.seconds()}
        # a resumed run estimates its first step again: that row replaces the checkpoint's
        self.history = [r for r in self.history if r["step"] != step] + [row]
        self.save()

    def seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def save(self) -> None:
        """Write the checkpoint and its history; a fresh run first copies an earlier run's aside (.prev)."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never overwrite a good file
            raise self._non_finite_error(f"the weights hold nan or inf at step {self.step}")
        run, path = self.run, self.run.checkpoint_path
        rng = {
            "batches": run.train_gen.get_state(),
            "eval": run.eval_gen.get_state(),
            "torch": torch.get_rng_state(),  # dropout's random numbers on the CPU ...
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],  # ... on NVIDIA GPUs
            "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,  # ... on Apple's
        }
        state = (self.model.state_dict(), self.optimizer.state_dict(), self.history, self.seconds(), rng)
        config, origin = dataclasses.asdict(run.config), run.weights_origin
        ckpt = checkpoints.Checkpoint(run.stage, config, run.tokenizer.chars, self.step, *state, origin)
        with self._signals.saving():  # a second Ctrl-C waits for the checkpoint and its history
            try:
                if self.saved_step is None and not run.args.resume and path.exists():
                    prev = checkpoints.previous_path(path)  # a copy: the old file stays until the new one is whole
                    shutil.copy2(path, prev)
                    with contextlib.suppress(FileNotFoundError):
                        shutil.copy2(checkpoints.history_path(path), checkpoints.history_path(prev))
                    tqdm.write(f"copied the earlier run's checkpoint to {prev} (--resume continues a run instead)")
                checkpoints.write_file(path, ckpt.to_file())
                checkpoints.write_history(checkpoints.history_path(path), self.history)
            except OSError as e:  # disk full, permissions changed: a file is written whole or not at all
                raise UserError(
                    f"could not save the checkpoint ({e.strerror or e}: {e.filename or path}); "
                    "what is on disk is the last one written whole. Free some space or pass another --checkpoint"
                ) from None
        self.saved_step = self.step

    def finish(self) -> None:
        """After training: save the final checkpoint, say whether its loss is normal, print a sample."""
        run = self.run
        if self.trained:
            self.save()
            print(f"saved {run.checkpoint_path} (step {self.step}, {self.seconds():.1f} s of training)")
            verdict = self.history and judge(run.stage, run.preset, run.at_defaults, self.history[-1]["val_loss"])
            if verdict:
                print(verdict)
        text = self.sample()
        print(text)
        if self.trained:
            path = run.checkpoint_path.with_suffix(".sample.txt")
            try:
                path.write_text(text + "\n", encoding="utf-8")
            except OSError as e:
                raise UserError(f"could not write {path} ({e.strerror or e}); the checkpoint is saved") from None

    def sample(self) -> str:
        """--prompt and --num_tokens characters sampled by the stage's generate() after it."""
        args, tokenizer = self.run.args, self.run.tokenizer
        idx = torch.tensor([tokenizer.encode(args.prompt or empty_prompt(tokenizer))], device=self.run.device)
        self.model.eval()
        # the context grows by one at every character: the model's plain forward, not a compiled one
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            out = self.model.generate(idx, args.num_tokens, temperature=args.temperature, top_k=args.top_k)
        self.model.train()
        text = tokenizer.decode(out[0].tolist())
        return text if args.prompt else text[1:]


# -- the closing verdict: the final val loss beside docs/runs.json's, which tools/train_all.py measures --

NOISE = 0.02  # how far the final val loss moves with other seeds or another CPU
RECORD = Path(__file__).resolve().parents[1] / "docs" / "runs.json"  # written by tools/train_all.py

# (stage, preset): the lecture's figure at those defaults, read off the video: a band, not a target
LECTURE: dict[tuple[str, str | None], str] = {
    ("01_bigram", None): "≈ 2.49",
    ("02_position_embedding", None): "≈ 2.5",
    ("03_causal_average", None): "— (not in the lecture)",
    ("04_self_attention_head", None): "≈ 2.4",
    ("05_multi_head_attention", None): "≈ 2.28",
    ("06_feed_forward", None): "≈ 2.24",
    ("07_transformer_blocks", None): "worse than 06 (≈ 2.3)",
    ("08_residual_connections", None): "≈ 2.08",
    ("09_layer_norm", None): "≈ 2.06",
    ("10_gpt", "cpu"): "— (the lecture trains only the video preset)",
    ("10_gpt", "video"): "≈ 1.48 (video preset, GPU)",
}
# what a loss far above or below the measured one usually means: for any stage, then for some
MEANING = {
    "above": "a higher loss with the defaults usually means a change that broke something: diff the stage",
    "below": "a loss well below it usually means the model sees the characters it must predict (the mask)",
    ("10_gpt", "above"): "a loss near 2.5 means the model learned only which character follows which",
    ("01_bigram", "below"): "a lower loss than a bigram table can reach: check the data",
}


def load_record(path: Path = RECORD) -> dict:
    """The recorded runs ({} when there is none): what tools/train_all.py wrote after a full run."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a bad merge or hand edit: the stages still run, without references
        print(f"warning: {path} cannot be read ({e}); no run is compared with it", file=sys.stderr)
        return {}


def measured(record: dict) -> dict[tuple[str, str | None], float]:
    """The final val loss a record holds for each (stage, preset)."""
    return {(stage, run.get("preset")): run["val_loss"] for stage, run in record.get("stages", {}).items()}


@functools.cache
def recorded() -> dict[tuple[str, str | None], float]:
    """The losses of docs/runs.json, read once, at the first run that asks."""
    return measured(load_record())


def judge(stage: str, preset: str | None, defaults: bool, val: float, known: dict | None = None) -> str | None:
    """One line: is this final val loss what the stage's defaults give? None for a file that is not a
    stage (a learner's copy, an exercise 4 variant). known: measured losses (docs/runs.json's if not given)."""
    if (stage, preset) not in LECTURE:
        return None
    reference, lecture = (recorded() if known is None else known).get((stage, preset)), LECTURE[stage, preset]
    where = f"{stage}'s defaults" + (f" (preset {preset})" if preset else "")
    if reference is None:
        return f"no reference for {where}: this project has not measured it (the lecture: {lecture})"
    if not defaults:
        return f"no reference for these settings: this project measured {reference:.4f} at {where} only"
    gap = val - reference
    if abs(gap) <= NOISE:
        lecture = f"; the lecture: {lecture.replace('≈', 'about')}" if lecture.startswith("≈") else ""
        return f"val loss {val:.4f} is as expected: {reference:.4f} at {where}, ±{NOISE} from run to run{lecture}"
    side = "above" if gap > 0 else "below"
    meaning = MEANING.get((stage, side), MEANING[side])
    return (
        f"val loss {val:.4f} is {abs(gap):.3f} {side} the {reference:.4f} measured at {where} "
        f"(run-to-run noise: ±{NOISE}): {meaning}"
    )
