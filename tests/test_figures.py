"""No measured figure written by hand: every decimal figure a learner reads in the README, in docs/ or in a
stage's docstring comes from a record, through a block that tools/pages.py makes. A figure typed into the
prose goes stale the day the record is made again, so this test finds each one and names it
(file:line: figure). The allow-list below holds the few decimal figures that are not measurements."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a number with one decimal point: 2.0604, 0.12, 99.8 (as in 99.8%); not a version such as 2.13.0
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
# what tools/pages.py makes: a block between its two markers, or a whole page that opens with its marker
GENERATED = re.compile(
    r"^<!-- made by tools/pages\.py: ([\w-]+) -->\n.*?^<!-- end of \1 -->$", re.DOTALL | re.MULTILINE
)
WHOLE_PAGE = "<!-- made by tools/pages.py from"

# (where, the text around the figure, why it is not a measurement); where is a file relative to the root,
# or "*" for any file. Keep it short: a measured figure belongs in a record, not here.
ALLOWED = [
    (
        "docs/README.md",
        r"±0\.02",
        "the noise band, said once, in 'How far to trust a figure': the tolerance the stages judge "
        "their own runs by (NOISE in harness/training.py), which every other page links to",
    ),
    ("*", r"\*\*-0\.5", "an exponent in a formula: head_size**-0.5 is the attention scale"),
    ("*", r"N\(0, 0\.02\)", "GPT-2's initialisation, a constant of its recipe"),
    (
        "docs/exercises.md",
        r"difference of 0\.01",
        "the difference exercises/compare.py sizes its seeds for: a setting of the tool, not a result",
    ),
    ("*", r"--\w+ \d+\.\d+", "a value typed on the command line, such as --temperature 0.5: a setting, not a result"),
]


def hand_written(text: str) -> str:
    """text with what tools/pages.py makes blanked out, its lines kept so that line numbers stay true."""
    if text.lstrip().startswith(WHOLE_PAGE):
        return "\n" * text.count("\n")
    return GENERATED.sub(lambda m: "\n" * m[0].count("\n"), text)


def allowed(where: str, line: str, start: int, end: int) -> bool:
    for place, pattern, _ in ALLOWED:
        if place in ("*", where):
            if any(m.start() <= start and end <= m.end() for m in re.finditer(pattern, line)):
                return True
    return False


def stray_figures(where: str, text: str, first_line: int = 1) -> list[str]:
    """'where:line: figure' for each decimal figure in text that is neither generated nor allowed."""
    found = []
    for number, line in enumerate(hand_written(text).splitlines(), first_line):
        for m in FIGURE.finditer(line):
            if not allowed(where, line, m.start(), m.end()):
                found.append(f"{where}:{number}: {m[0]}")
    return found


def docstring_lines(path: Path) -> tuple[str, int]:
    """A module's docstring as it stands in the file (its raw lines), and the line it starts on."""
    text = path.read_text(encoding="utf-8")
    body = ast.parse(text).body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)):
        return "", 1
    lines = text.splitlines()[body[0].lineno - 1 : body[0].end_lineno]
    return "\n".join(lines), body[0].lineno


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STAGES = sorted((ROOT / "stages").glob("[0-9][0-9]_*.py"))


def report(found: list[str]) -> str:
    for line in found:
        print(line)
    return f"{len(found)} figure(s) written by hand; put them in a record and on the page through tools/pages.py:\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_figure_in_the_prose_is_written_by_hand(document):
    found = stray_figures(str(document.relative_to(ROOT)), document.read_text(encoding="utf-8"))
    assert not found, report(found)


@pytest.mark.parametrize("stage", STAGES, ids=lambda p: p.stem)
def test_no_figure_in_a_stages_docstring(stage):
    text, first = docstring_lines(stage)
    found = stray_figures(str(stage.relative_to(ROOT)), text, first)
    assert not found, report(found)


def test_a_planted_figure_is_found_and_a_generated_or_allowed_one_is_not():
    text = (
        "The loss fell to 2.0604 here.\n"
        "<!-- made by tools/pages.py: stages -->\n| 01 | 2.4874 |\n<!-- end of stages -->\n"
        "torch 2.13.0, 1e-3 and 5,000 steps are no decimal figures; --temperature 0.5 is allowed.\n"
        "Then 99.8% of runs.\n"
    )
    assert stray_figures("docs/x.md", text) == ["docs/x.md:1: 2.0604", "docs/x.md:6: 99.8"]
    assert stray_figures("docs/x.md", "noise: ±0.02") == ["docs/x.md:1: 0.02"]  # the band, said once only
    assert stray_figures("docs/README.md", "noise: ±0.02") == []
    assert stray_figures("docs/stages/x.md", WHOLE_PAGE + " the stage -->\nval 1.7202\n") == []


def test_every_allowed_figure_says_why():
    for where, pattern, reason in ALLOWED:
        assert where == "*" or (ROOT / where).exists(), where
        assert re.compile(pattern) and len(reason.split()) >= 5, pattern
