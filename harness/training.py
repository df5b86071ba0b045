"""The bookkeeping around a stage's training loop, which the stage itself keeps in view.

trainer = harness.Trainer(run, model, optimizer)   # loads a checkpoint; compiles with --compile
for step in trainer.steps():                       # a progress bar; Ctrl-C stops cleanly
    trainer.log_estimate(step, losses)             # after a loss estimate: print, save
    ... the stage's own step, its forward pass in `with trainer.autocast():` ...
    trainer.count_step(loss)                       # after each step: progress, nan check
trainer.finish()                                   # save, compare, print a sample
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Iterator

import torch
from tqdm import tqdm

import common
from harness import checkpoints, references
from harness.errors import Interrupted, UserError
from harness.signals import StopSignals
from harness.stages import previous_stage
from harness.startup import Run

# Reading a loss on a GPU (loss.item()) makes the CPU wait for every kernel queued so far. There the
# losses stay on the GPU and are read every LOSS_READ_INTERVAL steps and before every save.
LOSS_READ_INTERVAL = 10


def read_interval(device: torch.device) -> int:
    return 1 if device.type == "cpu" else LOSS_READ_INTERVAL  # on a CPU, reading costs nothing


def estimate_seed(seed: int, step: int) -> int:
    """One seed for each (seed, step): seed < 2**32, so no two pairs share one; step 0's is seed + 1."""
    return seed + 1 + step * 2**32


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
        self.trained = False
        self.saved_step: int | None = None  # the step of the checkpoint on disk, written by this run
        self._t0 = time.perf_counter()
        self._bar: tqdm | None = None
        self._signals = StopSignals()
        self._unread: list[tuple[int, torch.Tensor]] = []  # (step number, its loss) not yet read
        self._read_interval = read_interval(run.device)
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
        ckpt = run.checkpoint
        if ckpt is not None:
            checkpoints.load_weights(model, ckpt, run.checkpoint_path, run.config)
            self.step, self.history, self.elapsed = ckpt.step, list(ckpt.history), ckpt.elapsed
            if run.args.resume:
                checkpoints.restore_training(ckpt, run, optimizer)
                self.saved_step = ckpt.step  # the checkpoint on disk, kept if anything goes wrong
                print(f"resumed from {run.checkpoint_path} at step {self.step}")
        elif run.init_from is not None:  # the weights alone; optimizer, step and history start afresh
            source = run.init_from
            checkpoints.load_weights(model, source, run.args.init_from, run.config, sizes_from_flags=True)
            val = f", val loss {source.history[-1]['val_loss']:.4f}" if source.history else ""
            print(f"initialised from {run.args.init_from} (step {source.step}{val}): fresh optimizer, step 0")
        if run.args.compile and not run.args.sample:
            # compiled in place: the same module, so its state_dict (and each checkpoint) keeps plain names
            model.compile(mode=run.args.compile)
            print(f"torch.compile (mode {run.args.compile}): the first steps and estimates compile")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass in bfloat16 where it is safe (--dtype bfloat16); otherwise nothing changes."""
        bf16 = self.run.args.dtype == "bfloat16"
        return torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=bf16)

    # -- the loop ---------------------------------------------------------------------------

    def steps(self) -> Iterator[int]:
        """Step numbers from the checkpoint's step (0 when fresh) to max_iters - 1; none with --sample.

        A stop signal (Ctrl-C, SIGTERM, SIGHUP) is held until the current step ends; then the
        checkpoint is saved and the run stops with a line that says how to resume it.
        """
        max_iters = self.run.config.max_iters
        if self.run.args.sample:
            return
        if self.step >= max_iters:
            print(f"the checkpoint is already at step {self.step}; raise --max_iters to train further")
            return
        self._bar = tqdm(
            total=max_iters, initial=self.step, desc=self.run.stage, unit="step", dynamic_ncols=True, disable=None
        )
        with self._bar, self._signals as signals:
            for step in range(self.step, max_iters):
                # a loss estimate at this step draws the same batches however the run got here
                if self.run.eval_gen is not None:
                    self.run.eval_gen.manual_seed(estimate_seed(self.run.args.seed, step))
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

    def count_step(self, loss: torch.Tensor) -> None:
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
                raise self._stopped_on(f"the training loss became {value} at step {step}")
        if self._bar is not None and self._bar.n % 10 < len(steps):  # the reads that pass a multiple of 10
            self._bar.set_postfix(loss=f"{value:.4f}", refresh=False)

    def _stopped_on(self, what: str) -> UserError:
        """The error for a nan or inf: says which checkpoint is kept, and what to do."""
        path = self.run.checkpoint_path
        kept = f"{path} (step {self.saved_step}) is kept" if self.saved_step is not None else "nothing was saved"
        return UserError(f"{what}; training stopped and {kept}. Lower --learning_rate and train again")

    def log_estimate(self, step: int, losses: dict[str, float]) -> None:
        """Print a loss estimate, add it to the history, and save a checkpoint."""
        self.read_losses()  # a nan in training comes first: it is what made the estimate nan
        if not all(math.isfinite(v) for v in losses.values()):
            raise self._stopped_on(
                f"the estimated loss became {losses['train']} (train), {losses['val']} (val) at step {step}"
            )
        tqdm.write(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"], "elapsed_s": self.seconds()}
        # a resumed run estimates its first step again: that row replaces the checkpoint's
        self.history = [r for r in self.history if r["step"] != step]
        self.history.append(row)
        self.save()

    def seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def save(self) -> None:
        """Write the checkpoint and its history, keeping an earlier run's file aside the first time."""
        self.read_losses()  # never save a model whose training went nan since the last read
        run = self.run
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never overwrite a good file
            raise self._stopped_on(f"the weights hold nan or inf at step {self.step}")
        ckpt = checkpoints.of_run(run, self.model, self.optimizer, self.step, self.history, self.seconds())
        path = run.checkpoint_path
        with self._signals.saving():  # a second Ctrl-C waits for the checkpoint and its history
            try:
                if self.saved_step is None and not run.args.resume and path.exists():
                    self._keep_previous()
                checkpoints.save(path, ckpt)
                checkpoints.write_history(checkpoints.history_path(path), self.history)
            except OSError as e:  # disk full, permissions changed: a file is written whole or not at all
                raise UserError(
                    f"could not save the checkpoint ({e.strerror or e}: {e.filename or path}); "
                    "what is on disk is the last one written whole. Free some space or pass another --checkpoint"
                ) from None
        self.saved_step = self.step

    def _keep_previous(self) -> None:
        """A fresh run is about to replace an earlier run's checkpoint: copy it (and its history) aside."""
        path = self.run.checkpoint_path
        prev = checkpoints.previous_path(path)
        shutil.copy2(path, prev)  # a copy: until the new file is whole, the old one stays where it was
        if checkpoints.history_path(path).exists():
            shutil.copy2(checkpoints.history_path(path), checkpoints.history_path(prev))
        tqdm.write(
            f"copied the earlier run's checkpoint to {prev} before replacing it (--resume continues a run instead)"
        )

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
        text = self.sample()
        print(text)
        if self.trained:
            path = run.checkpoint_path.with_suffix(".sample.txt")
            try:
                path.write_text(text + "\n", encoding="utf-8")
            except OSError as e:
                raise UserError(
                    f"could not write {path} ({e.strerror or e}); the checkpoint is saved, and --sample prints more"
                ) from None

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

    def _compare_with_previous_stage(self) -> None:
        previous = previous_stage(self.run.stage)
        if not self.history or previous is None:
            return
        rows = checkpoints.read_history(checkpoints.history_path(self.run.checkpoint_path.parent / f"{previous}.pt"))
        if rows:
            print(
                f"val loss {self.history[-1]['val_loss']:.4f} here; "
                f"{rows[-1]['val_loss']:.4f} at the end of {previous}'s last run"
            )
