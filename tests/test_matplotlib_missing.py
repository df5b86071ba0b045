"""A tool that draws a chart says it needs matplotlib, and how to install it: in its --help, and in one
line when matplotlib is missing (a None in sys.modules makes `import matplotlib` fail, installed or not)."""

import sys

import pytest

from exercises import compare
from tools import attention, dropout, plot

INSTALL = "pip install matplotlib"


def test_the_hint_names_both_ways_to_install_it():
    assert INSTALL in plot.MATPLOTLIB_HINT and "pip install -r requirements-dev.txt" in plot.MATPLOTLIB_HINT


@pytest.mark.parametrize("main", [plot.main, attention.main, dropout.main], ids=["plot", "attention", "dropout"])
def test_the_help_says_what_needs_matplotlib(main, capsys):
    assert main(["--help"]) == 0
    assert INSTALL in " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_plot_says_so_first_in_one_line_and_fails(tmp_path, monkeypatch, capsys):
    """Before anything else: a learner without a trained stage learns both things in the right order."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = plot.main(["--checkpoints", str(tmp_path)])  # no history here either
    out, err = capsys.readouterr()
    assert code != 0 and not out
    assert err.count("\n") == 1 and err.startswith("error:") and INSTALL in err


def test_the_optional_charts_say_why_there_is_none(tmp_path, monkeypatch):
    """compare.py and dropout.py keep their tables: the chart's place says how to get it."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert compare.chart([], tmp_path) == f"no chart: {plot.MATPLOTLIB_HINT}"
    assert dropout.chart({}, 1000, tmp_path) == f"no chart: {plot.MATPLOTLIB_HINT}"
