"""Stopping a run cleanly: Ctrl-C, a job scheduler's SIGTERM or a closed terminal's SIGHUP.

The first signal asks training to stop after the step in progress, so that the checkpoint can be
saved whole and resumed; a second one stops at once (StopNow), saving nothing more. A checkpoint
being written when the second one comes is finished first, so that it and its history agree.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from tqdm import tqdm

# SIGHUP does not exist on Windows; there Ctrl-C (SIGINT) and SIGTERM are all there is
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def describe(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl-C"
    return signal.Signals(signum).name  # "SIGTERM", "SIGHUP"


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
        self._saving = False
        self._final_save = False  # saving outside the training loop, after its last step
        self._during_save: int | None = None  # a second signal that came while a file was written

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:  # `nohup` ignores SIGHUP: it must stay ignored
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Around writing a checkpoint and its history: a second signal waits until both are written.
        Outside the training loop (the final save) the signals are held here for the save alone."""
        self._final_save = not self._previous
        if self._final_save:
            self.__enter__()
        received_before, self._saving = self.received, True
        try:
            yield
        finally:
            self._saving = False
            if self._final_save:
                self.__exit__()
        signum = self._during_save
        if self._final_save and self.received != received_before:
            signum = self.received  # a first signal during the final save: nothing is left to stop after
        if signum is not None:
            raise StopNow(signum, f"{describe(signum)}: stopped once the checkpoint being written was whole")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop at once, the last saved checkpoint stays as it was
            if self._saving:  # ... once the one being written is whole, with its history
                self._during_save = signum
                return
            raise StopNow(signum, f"{describe(signum)} again: stopped without saving; the last checkpoint is unchanged")
        self.received = signum
        if self._final_save:
            return  # saving() says what happened once the file is whole
        try:
            tqdm.write(
                f"{describe(signum)}: stopping after this step and saving a checkpoint "
                f"({'Ctrl-C' if signum == signal.SIGINT else 'a second signal'} again quits without saving)"
            )
        except OSError:  # the terminal is gone (SIGHUP): stop and save all the same
            pass

    @property
    def stopped(self) -> str:
        """How the run ended, for its last line: "interrupted" (Ctrl-C) or "stopped by SIGTERM"."""
        return "interrupted" if self.received in (None, signal.SIGINT) else f"stopped by {describe(self.received)}"

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)  # as a shell reports a process a signal stopped
