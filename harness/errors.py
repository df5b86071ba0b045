"""How a run ends. A first stop signal (Ctrl-C, a job scheduler's SIGTERM, a closed terminal's SIGHUP)
asks training to stop after the step in progress and save a checkpoint it can resume from; a second
stops at once, but never while a checkpoint is being written. run_main turns each failure a user can
cause into one line on stderr and an exit status."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from tqdm import tqdm

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by Ctrl-C" (128 + SIGINT)
# what torch says when memory runs out: CUDA's OutOfMemoryError, and RuntimeErrors on the CPU and mps
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")
# SIGHUP does not exist on Windows; there Ctrl-C (SIGINT) and SIGTERM are all there is
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def describe(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name  # "SIGTERM", "SIGHUP"


class Stopped(KeyboardInterrupt):
    """A stop signal ended the run; its message says what was saved. The exit status is a shell's for it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While active (a `with` block), the stop signals set `received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal's number
        self._previous: dict[int, object] = {}  # the handlers to put back
        self._saving = self._outside = False
        self._held: int | None = None  # a signal that waits for the file being written

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:  # `nohup` ignores SIGHUP: it must stay ignored
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Around writing a checkpoint and its history: a signal meanwhile waits until both are whole (after the
        training loop, for the final save, the signals are caught for the save alone)."""
        self._outside = not self._previous
        with self if self._outside else contextlib.nullcontext():
            self._saving = True
            try:
                yield
            finally:
                self._saving = False
        if self._held is not None:
            raise Stopped(self._held, f"{describe(self._held)}: stopped once the checkpoint being written was whole")

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._saving and (self.received is not None or self._outside):
            self._held = signum
        elif self.received is not None:
            raise Stopped(signum, f"{describe(signum)} again: stopped without saving; the last checkpoint is unchanged")
        else:
            self.received = signum
            with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): stop and save all the same
                tqdm.write(f"{describe(signum)}: stopping after this step to save a checkpoint (again: quit at once)")


class UserError(Exception):
    """A failure the user can fix: run_main prints its message as one line and exits non-zero."""

    exit_code = EXIT_USER_ERROR


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type's name), at most 160 characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def explain_torch_error(e: RuntimeError) -> str | None:
    """Out of memory, or a failure of --compile's compilers, as one line; None for any other error."""
    said = first_line(e)[:120]
    if type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return f"torch.compile failed ({said}); train without --compile, and see what python tools/doctor.py says"
    if type(e).__name__ == "OutOfMemoryError" or any(s in str(e).lower() for s in OUT_OF_MEMORY):
        return (
            f"out of memory ({said}); try a smaller --batch_size or --block_size, --preset cpu, or --device cpu; "
            "the last checkpoint saved, if any, is kept whole"
        )
    return None


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """main(argv), its failures explained: a UserError, a stop signal or out of memory becomes one line
    on stderr and an exit status. argparse's own exits (--help, a bad flag) pass through."""
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}  # training's own are undone however main ends
    try:
        status = main(argv)
        return status if isinstance(status, int) else 0
    except SystemExit as e:  # argparse: --help (0) or a command-line error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    except UserError as e:
        line, code = f"error: {e}", e.exit_code
    except Stopped as e:  # a stop signal: its line says what was saved
        line, code = f"\n{e}", e.exit_code
    except KeyboardInterrupt:
        line, code = "\ninterrupted: stopped without saving; any earlier checkpoint is unchanged", EXIT_INTERRUPTED
    except RuntimeError as e:  # torch's: out of memory, or --compile's compilers
        if (said := explain_torch_error(e)) is None:
            raise
        line, code = f"error: {said}", EXIT_USER_ERROR
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the exit status still tells
        print(line, file=sys.stderr)
    return code
