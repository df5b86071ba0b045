"""Failures a user can cause, and run_main, which turns each into one line on stderr and an exit status."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

from harness.signals import STOP_SIGNALS, StopNow

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by Ctrl-C" (128 + SIGINT)
# what torch says when memory runs out: CUDA's OutOfMemoryError, and RuntimeErrors on the CPU and mps
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


class UserError(Exception):
    """A failure the user can fix: run_main prints its message as one line and exits non-zero."""

    exit_code = EXIT_USER_ERROR


class Interrupted(UserError):  # noqa: N818 (a stop the user asked for, not an error)
    """Ctrl-C or a termination signal: training stopped cleanly, its checkpoint saved."""

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 128 + the signal's number, as a shell reports it


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type's name), at most 160 characters."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def to_stderr(text: str) -> None:
    with contextlib.suppress(OSError):  # the terminal is gone (SIGHUP): the exit status still tells
        print(text, file=sys.stderr)


def compile_failed(e: BaseException) -> str | None:
    """The one line for a failure of torch.compile's compilers (--compile); None for any other error."""
    if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return None
    said = first_line(e)[:120]
    return f"torch.compile failed ({said}); train without --compile, and see what python tools/doctor.py says"


def out_of_memory(e: BaseException) -> str | None:
    """The one line for torch's out of memory, wherever it struck (a step, an estimate, sampling); None
    for any other error."""
    if type(e).__name__ != "OutOfMemoryError" and not any(s in str(e).lower() for s in OUT_OF_MEMORY):
        return None
    # "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ..." -> "DefaultCPUAllocator: ..."
    said = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", first_line(e))[:120]
    return (
        f"out of memory ({said}); try a smaller --batch_size or --block_size, --preset cpu, or --device cpu; "
        "the last checkpoint saved, if any, is kept whole"
    )


def run_main(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """main(argv), its failures explained: a UserError, a stop signal or out of memory becomes one line
    on stderr and an exit status. argparse's own exits (--help, a bad flag) pass through."""
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}  # training's own are undone however main ends
    try:
        status = main(argv)
        return status if isinstance(status, int) else 0
    except Interrupted as e:
        to_stderr(str(e))
        return e.exit_code
    except UserError as e:
        to_stderr(f"error: {e}")
        return e.exit_code
    except StopNow as e:  # a second stop signal
        to_stderr(f"\n{e}")
        return e.exit_code
    except KeyboardInterrupt:
        to_stderr("\ninterrupted: stopped without saving; any earlier checkpoint is unchanged")
        return EXIT_INTERRUPTED
    except SystemExit as e:  # argparse: --help (0) or a command-line error (already printed)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    except RuntimeError as e:  # torch's: out of memory, or --compile's compilers
        if (line := out_of_memory(e) or compile_failed(e)) is None:
            raise
        to_stderr(f"error: {line}")
        return EXIT_USER_ERROR
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
