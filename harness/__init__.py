"""The program around the lesson: what makes each stage a sturdy command-line tool.

A stage's main() uses three names from here (docs/code.md draws the path through them):

    start(...)    the command line, the device, the seed, the text and its vocabulary, the checkpoint
    Trainer(...)  the model's weights, compiling, the steps, Ctrl-C, saving, the closing sample
    run_main(...) every failure a user can cause -> one line on stderr and an exit status

The modules, one question each: cli (what did the user ask for?), startup (what does this run
start from?), training (the loop's bookkeeping), checkpoints (what a checkpoint holds, on disk),
files (the text; writing files whole), signals (stopping cleanly), errors (what went wrong?),
references (is my loss normal?), stages (which stage files are there?).
"""

from harness.errors import UserError, run_main
from harness.startup import Run, start
from harness.training import Trainer

__all__ = ["Run", "Trainer", "UserError", "run_main", "start"]
