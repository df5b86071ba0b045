"""Stopping a run cleanly: Ctrl-C, a job scheduler's SIGTERM or a closed terminal's SIGHUP.

The first signal asks training to stop after the step in progress, so that the checkpoint can be
saved whole and resumed; a second one stops at once (KeyboardInterrupt), saving nothing more.
"""

from __future__ import annotations

import signal
from types import FrameType

from tqdm import tqdm

# SIGHUP does not exist on Windows; there Ctrl-C (SIGINT) and SIGTERM are all there is
STOP_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def describe(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl-C"
    return signal.Signals(signum).name  # "SIGTERM", "SIGHUP"


class StopSignals:
    """While active (a `with` block), the stop signals set `received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal's number
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:  # `nohup` ignores SIGHUP: it must stay ignored
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # a second signal: stop at once, the last saved checkpoint stays as it was
            raise KeyboardInterrupt
        self.received = signum
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
