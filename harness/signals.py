"""Stopping a run cleanly: Ctrl-C, a job scheduler's SIGTERM or a closed terminal's SIGHUP.

The first signal asks training to stop after the step in progress, so that the checkpoint is saved
whole and can be resumed; a second one stops at once (StopNow), saving nothing more. A checkpoint
being written when it comes is finished first, so that it and its history agree.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from tqdm import tqdm

# SIGHUP does not exist on Windows; there Ctrl-C (SIGINT) and SIGTERM are all there is
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def describe(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name  # "SIGTERM", "SIGHUP"


class StopNow(KeyboardInterrupt):
    """A second stop signal: quit at once, with the exit status a shell gives that signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While active (a `with` block), the stop signals set `received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal's number
        self._previous: dict[int, object] = {}
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
        """Around writing a checkpoint and its history: a signal that comes meanwhile waits until both are
        whole. After the training loop (the final save) the signals are caught for the save alone."""
        self._outside = not self._previous
        with self if self._outside else contextlib.nullcontext():
            self._saving = True
            try:
                yield
            finally:
                self._saving = False
        if self._held is not None:
            raise StopNow(self._held, f"{describe(self._held)}: stopped once the checkpoint being written was whole")

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._saving and (self.received is not None or self._outside):
            self._held = signum
        elif self.received is not None:
            raise StopNow(signum, f"{describe(signum)} again: stopped without saving; the last checkpoint is unchanged")
        else:
            self.received = signum
            again = "Ctrl-C" if signum == signal.SIGINT else "a second signal"
            with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): stop and save all the same
                tqdm.write(
                    f"{describe(signum)}: stopping after this step and saving a checkpoint ({again} again quits)"
                )

    @property
    def stopped(self) -> str:
        """How the run ended, for its last line: "interrupted" (Ctrl-C) or "stopped by SIGTERM"."""
        return "interrupted" if self.received in (None, signal.SIGINT) else f"stopped by {describe(self.received)}"

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)  # as a shell reports a process a signal stopped
