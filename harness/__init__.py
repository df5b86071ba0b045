"""The program around the lesson. A stage's main() uses three names from here, drawn in docs/code.md:
start (the command line, the data, any checkpoint -> a Run), Trainer (the steps, saving, stopping,
the closing sample) and run_main (each failure a user can cause -> one line and an exit status)."""

from harness.cli import Run, start
from harness.errors import UserError, run_main
from harness.training import Trainer

__all__ = ["Run", "Trainer", "UserError", "run_main", "start"]
