"""The program around the lesson: what makes each stage a sturdy command-line tool.

A stage's main() uses three names from here; the rest serves them, the tools and the tests.

    start(...)    the command line, the device, the seed, the text and its vocabulary, the checkpoint
                  (to resume, to sample from, or with --init_from to start from) -> a Run
    Trainer(...)  the weights it starts from, compiling, the steps, the progress bar, Ctrl-C, saving,
                  the loss history, the sample
    run_main(...) every failure a user can cause -> one line on stderr and an exit status

Modules, one job each:
    cli          the flags, built from a stage's Config, and presets
    textfile     downloading tiny Shakespeare, checking a text file before it is read
    startup      start() and the Run it returns; which vocabulary a run takes (--vocab_from)
    training     the Trainer: the model's checkpoint, steps, --compile and --dtype, saving, the sample
    signals      Ctrl-C, SIGTERM and SIGHUP stop after the current step, saved
    checkpoints  the Checkpoint (what one holds), its file and the loss history beside it
    files        writing a file whole or not at all; checking a folder is writable
    references   the val loss each stage's defaults give, for the closing "is it normal?" line
    paired_test  the paired t-test that judges two sets of runs seed by seed
    schedule     nanoGPT's warm-up and cosine decay, for the exercises' programs (no stage uses it)
    stages       finding and importing the stages by number or name
    machine      this machine's name, for result tables
    errors       UserError and run_main
"""

from harness.errors import UserError, run_main
from harness.startup import Run, start
from harness.training import Trainer

__all__ = ["Run", "Trainer", "UserError", "run_main", "start"]
