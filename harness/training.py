"""The bookkeeping around a stage's training loop, which the stage itself keeps in view.

trainer = harness.Trainer(run, model, optimizer)   # loads --resume, --sample and --init_from
for step in trainer.steps():                       # a progress bar; Ctrl-C stops cleanly
    ... the stage's own step ...
    trainer.log(step, losses)                      # after a loss estimate: print, save
    trainer.record(loss)                           # after each step: progress, nan check
trainer.finish()                                   # save, compare, print a sample
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
from tqdm import tqdm

from harness import accelerate, errors, references
from harness.checkpoints import Saver, history_path, load_weights, read_history, restore_training
from harness.errors import Interrupted, UserError
from harness.signals import StopSignals
from harness.stages import previous_stage
from harness.startup import Run

# Reading a loss on a GPU (loss.item()) makes the CPU wait until the GPU has run every kernel queued
# so far, which empties the queue the GPU works from. There the losses stay on the GPU and are read
# every LOSS_READ_INTERVAL steps, and before every save; on a CPU, every step (reading costs nothing).
LOSS_READ_INTERVAL = 10


def read_interval(device: torch.device) -> int:
    return 1 if device.type == "cpu" else LOSS_READ_INTERVAL


class Trainer:
    """Steps, progress, stopping on a signal or a nan, saving, and the closing sample."""

    def __init__(self, run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.run, self.model, self.optimizer = run, model, optimizer
        self.step = 0  # optimizer steps completed
        self.history: list[dict[str, float]] = []  # one row per loss estimate
        self.elapsed = 0.0  # training seconds before this process (from the checkpoint)
        self.trained = False
        self.saver = Saver(run)
        self._t0 = time.perf_counter()
        self._bar: tqdm | None = None
        self._signals = StopSignals()
        self._unread: list[tuple[int, torch.Tensor]] = []  # (step number, its loss) not yet read
        self._read_interval = read_interval(run.device)
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
        errors.explain_out_of_memory = self.out_of_memory
        ckpt = run.checkpoint
        if ckpt is not None:
            load_weights(model, ckpt, run.checkpoint_path, run.config)  # one clear error for another size
            self.step, self.history, self.elapsed = ckpt.step, list(ckpt.history), ckpt.elapsed
            if run.args.resume:
                restore_training(ckpt, run, optimizer)
                self.saver.saved_step = ckpt.step  # the checkpoint on disk, kept if anything goes wrong
                print(f"resumed from {run.checkpoint_path} at step {self.step}")
        elif run.init_source is not None:  # --init_from: the weights alone; optimizer, step and history start afresh
            source, run.init_source = run.init_source, None  # its optimizer state is not needed: let it go
            load_weights(model, source, run.args.init_from, run.config, sizes_from_flags=True)
            val = f", val loss {source.history[-1]['val_loss']:.4f}" if source.history else ""
            print(f"initialised from {run.args.init_from} (step {source.step}{val}): fresh optimizer, step 0")

    # -- the loop ---------------------------------------------------------------------------

    def steps(self) -> Iterator[int]:
        """Step numbers from the checkpoint's step (0 when fresh) to max_iters - 1; none with --sample.

        A stop signal (Ctrl-C, SIGTERM, SIGHUP) is held until the current step ends, then the
        checkpoint is saved and the run stops with a line that says how to resume it. The plan's
        matmul precision holds for the loop alone: torch's setting is restored after it.
        """
        max_iters = self.run.config.max_iters
        if self.run.sample_only:
            return
        if self.step >= max_iters:
            print(f"the checkpoint is already at step {self.step}; raise --max_iters to train further")
            return
        self._bar = tqdm(
            total=max_iters, initial=self.step, desc=self.run.stage, unit="step", dynamic_ncols=True, disable=None
        )
        precision = accelerate.float32_matmul_precision(self.run.plan)
        with self._bar, self._signals as signals, precision:
            for step in range(self.step, max_iters):
                self.run.seed_estimate(step)  # a loss estimate at this step: the same batches on every path
                yield step  # the stage's loop body runs here: one optimizer step
                self.step = step + 1
                self.trained = True
                if signals.received is not None:
                    self.save()
                    raise Interrupted(
                        f"{signals.stopped} at step {self.step}: saved {self.run.checkpoint_path}; "
                        "continue with the same command plus --resume",
                        signals.exit_code,
                    )

    def record(self, loss: torch.Tensor) -> None:
        """After an optimizer step: count it, show the loss; stop on nan or inf before a bad model is saved."""
        # a copy: with CUDA graphs the next step's replay writes over the loss tensor itself
        self._unread.append((self.step + 1, loss.detach().clone()))
        if self._bar is not None:
            self._bar.update(1)
        if len(self._unread) >= self._read_interval:
            self.read_losses()

    def read_losses(self) -> None:
        """Read the losses recorded since the last read, in one wait for the device; stop at the first nan."""
        if not self._unread:
            return
        steps, losses = zip(*self._unread, strict=True)
        self._unread = []
        for step, value in zip(steps, torch.stack(losses).tolist(), strict=True):
            if not math.isfinite(value):
                raise self.saver.non_finite(f"the training loss became {value} at step {step}")
        if self._bar is not None and self._bar.n % 10 < len(steps):  # the reads that pass a multiple of 10
            self._bar.set_postfix(loss=f"{value:.4f}", refresh=False)

    def log(self, step: int, losses: dict[str, float]) -> None:
        """Print a loss estimate, add it to the history, and save a checkpoint."""
        self.read_losses()  # a nan in training comes first: it is what made the estimate nan
        if not all(math.isfinite(v) for v in losses.values()):
            what = f"the estimated loss became {losses['train']} (train), {losses['val']} (val) at step {step}"
            raise self.saver.non_finite(what)
        tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "elapsed_s": self.seconds()}
        # a resumed run estimates its first step again: that row replaces the checkpoint's
        self.history = [r for r in self.history if r["step"] != step]
        self.history.append(row)
        self.save()

    def seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def save(self) -> None:
        self.read_losses()  # never save a model whose training went nan since the last read
        with self._signals.saving():  # a second Ctrl-C waits for the checkpoint and its history
            self.saver.save(self.model, self.optimizer, self.step, self.history, self.seconds())

    def out_of_memory(self, said: str) -> str:
        """The one line for out of memory in this run: what ran out, what the run asked for, what to try."""
        cfg, run = self.run.config, self.run
        parameters = sum(p.numel() for p in self.model.parameters())
        if run.sample_only:
            doing, kept = f"sampling from {parameters:,} parameters", f"{run.checkpoint_path} is unchanged"
        else:
            sizes = f"batch_size {cfg.batch_size} x block_size {cfg.block_size}, {parameters:,} parameters"
            doing = f"training batches of {sizes}"
            saved = self.saver.saved_step
            kept = f"{run.checkpoint_path} (step {saved}) is kept" if saved is not None else "nothing was saved"
        tries = ["a smaller --batch_size or --block_size"]
        if run.preset is not None and run.preset != "cpu":  # a stage with presets has a small one
            tries.append("--preset cpu")
        if run.device.type != "cpu":
            tries.append("--device cpu")
        return f"{run.device} ran out of memory ({said}) {doing}; try {', or '.join(tries)}; {kept}"

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> None:
        """After training: save the final checkpoint, compare with the previous stage, print a sample."""
        run = self.run
        if self.trained:
            self.save()
            print(f"saved {run.checkpoint_path} (step {self.step}, {self.seconds():.1f} s of training)")
            self._compare_with_previous_stage()
            verdict = self.history and references.judge(
                run.stage, run.preset, run.at_defaults, self.history[-1]["val_loss"]
            )
            if verdict:
                print(verdict)
        text = run.generate_text(self.model)
        print(text)
        if self.trained:
            sample = run.checkpoint_path.with_suffix(".sample.txt")
            try:
                sample.write_text(text + "\n", encoding="utf-8")
            except OSError as e:
                raise UserError(
                    f"could not write {sample} ({e.strerror or e}); the checkpoint is saved, and --sample prints more"
                ) from None

    def _compare_with_previous_stage(self) -> None:
        previous = previous_stage(self.run.stage)
        if not self.history or previous is None:
            return
        rows = read_history(history_path(self.run.checkpoint_path.parent / f"{previous}.pt"))
        if rows:
            print(
                f"val loss {self.history[-1]['val_loss']:.4f} here; "
                f"{rows[-1]['val_loss']:.4f} at the end of {previous}'s last run"
            )
