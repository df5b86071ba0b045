"""tools/pages.py and the record: the pages are what the stages and the recorded runs make, every
figure shown agrees with the record, and every link points at something."""

import dataclasses
import difflib
import re

import pytest

import harness
import harness.references
import harness.stages
from conftest import ROOT
from tools import pages

SOURCES = pages.load_sources()
RECORD = SOURCES.record
STAGES = harness.stages.stage_names()
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_every_stage_has_a_recorded_run():
    assert list(RECORD["stages"]) == STAGES
    for stage, run in RECORD["stages"].items():
        assert run["history"][-1][1:] == [run["train_loss"], run["val_loss"]], stage
        assert run["history"][-1][0] + 1 == run["steps"] and run["sample"].strip(), stage
    assert RECORD["note"] is None  # a full run at the defaults, nothing else is the record


def test_the_pages_and_tables_are_what_the_stages_and_the_record_make():
    """A page whose diff, lesson or figures drifted from the stages or the record fails here:
    `python tools/pages.py` writes them again."""
    assert [p.relative_to(ROOT) for p in pages.stale_files(SOURCES)] == []


@pytest.mark.parametrize("stage", STAGES[1:])
def test_each_page_shows_the_diff_of_todays_stages(stage):
    before = STAGES[STAGES.index(stage) - 1]
    page = (pages.PAGES / f"{stage}.md").read_text(encoding="utf-8")
    shown = re.search(r"^(`{3,})diff\n(.*?)\n\1$", page, re.DOTALL | re.MULTILINE)
    today = difflib.unified_diff(
        (harness.stages.STAGE_DIR / f"{before}.py").read_text(encoding="utf-8").splitlines(),
        (harness.stages.STAGE_DIR / f"{stage}.py").read_text(encoding="utf-8").splitlines(),
        f"stages/{before}.py",
        f"stages/{stage}.py",
        lineterm="",
    )
    assert shown and shown.group(2) == "\n".join(today)


@pytest.mark.parametrize("stage", STAGES)
def test_each_page_has_its_lesson_curve_and_sample(stage):
    page = (pages.PAGES / f"{stage}.md").read_text(encoding="utf-8")
    run = RECORD["stages"][stage]
    assert page.count("\n# ") + page.startswith("# ") == 1 and pages.lesson(SOURCES.stages[stage]) in page
    assert f"python stages/{stage}.py" in page
    assert f"| val loss | {run['val_loss']:.4f} | {harness.references.lecture_figure(stage, run['preset'])} |" in page
    assert f"](../images/curve_{stage}.png)" in page and pages.curve_image(stage).stat().st_size > 1000
    assert pages.fence(run["sample"], "text") in page
    if stage == "10_gpt":
        assert "## What dropout is for" in page and "](../images/dropout_10_gpt.png)" in page
        assert "](../images/attention_10_gpt.png)" in page


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_points_at_a_file(document):
    text = document.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        assert (document.parent / target.split("#")[0]).exists(), f"{document.name}: {target}"


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    first_screen = "\n".join(lines[:30])
    assert "python stages/01_bigram.py" in first_screen and "diff" in first_screen
    table = [line for line in lines if line.startswith("| [")]
    assert [re.match(r"\| \[(\d\d)\]\(docs/stages/(\w+)\.md\)", row).group(2) for row in table] == STAGES


def test_the_references_are_the_recorded_figures():
    """ "Is my loss normal?" compares a run with the recorded figure, nothing written a second time."""
    for stage, run in RECORD["stages"].items():
        reference = harness.references.REFERENCES[stage, run["preset"]]
        assert reference.measured == run["val_loss"]
    assert harness.references.REFERENCES["10_gpt", "video"].measured is None  # never recorded here
    assert "has not measured" in harness.references.judge("10_gpt", "video", True, 1.49)


def test_without_a_record_nothing_is_claimed(tmp_path):
    assert harness.references.load_record(tmp_path / "none.json") == {}
    known = harness.references.references({})
    assert all(r.measured is None for r in known.values())
    said = harness.references.judge("09_layer_norm", None, True, 2.06, known)
    assert said.startswith("no reference for 09_layer_norm's defaults: this project has not measured it")
    assert pages.stages_table({}).startswith("No run is recorded yet")
    page = pages.stage_page("02_position_embedding", dataclasses.replace(SOURCES, record={}))
    assert "No run of this stage is recorded yet" in page and "```diff" in page and "## What it writes" not in page


@pytest.mark.parametrize("stage", STAGES)
def test_each_stages_docstring_gives_its_recorded_figures(stage):
    """The figures a learner reads at the top of a stage are the recorded ones."""
    run = RECORD["stages"][stage]
    doc = harness.stages.load_stage(stage).__doc__
    said = re.search(r"Measured: val loss (\d\.\d{4}), train (\d\.\d{4}), after (\d+) steps.*? in (\d+) s", doc)
    assert said, stage
    assert [float(said[1]), float(said[2]), int(said[3]), int(said[4])] == [
        round(run["val_loss"], 4),
        round(run["train_loss"], 4),
        run["steps"],
        round(run["wall_time_s"]),
    ]
    assert f"on {RECORD['machine']}, {RECORD['date']}" in doc


def test_a_changed_stage_makes_its_page_and_the_next_stale():
    stages = dict(SOURCES.stages)
    stages["05_multi_head_attention"] += "\n# one more line\n"
    stale = pages.stale_files(dataclasses.replace(SOURCES, stages=stages))
    assert {p.name for p in stale} == {"05_multi_head_attention.md", "06_feed_forward.md"}


def test_a_block_of_an_unknown_name_or_without_its_end_is_one_error(tmp_path):
    made = {"stages": "the table"}
    text = "a\n<!-- made by tools/pages.py: stages -->\nold\n<!-- end of stages -->\nb\r\n"
    assert pages.fill_blocks(text, made, tmp_path) == text.replace("old", "the table")
    with pytest.raises(harness.UserError, match="has a block named 'nope'; tools/pages.py makes stages: fix its name"):
        pages.fill_blocks("<!-- made by tools/pages.py: nope -->\n<!-- end of nope -->\n", made, tmp_path)
    with pytest.raises(harness.UserError, match="without its '<!-- end of NAME -->' line"):
        pages.fill_blocks("<!-- made by tools/pages.py: stages -->\nold\n", made, tmp_path)


def test_the_check_names_each_stale_file_and_fails(monkeypatch, capsys):
    stale = [pages.PAGES / "03_causal_average.md"]
    monkeypatch.setattr(pages, "stale_files", lambda sources: stale)
    assert pages.main(["--check"]) == 1
    assert (
        capsys.readouterr().out == "out of date: docs/stages/03_causal_average.md (python tools/pages.py writes it)\n"
    )
    monkeypatch.setattr(pages, "stale_files", lambda sources: [])
    assert pages.main(["--check"]) == 0


def test_the_lesson_is_the_docstring_as_markdown():
    source = (
        '"""Stage 99: a title.\n\nThe concept: scaled by head_size**-0.5, then\nsoftmaxed.\n'
        "New against stage 98: one thing.\n\nRun:     python stages/99.py\nMeasured: val loss 1.0000\n"
        '          on a machine.\n"""\n'
    )
    assert pages.title(source) == "Stage 99: a title"
    assert pages.lesson(source) == (
        "The concept: scaled by `head_size**-0.5`, then softmaxed.\n\nNew against stage 98: one thing."
    )


def test_a_fence_is_longer_than_any_backticks_inside():
    assert pages.fence("a ``` b", "text") == "````text\na ``` b\n````"
    assert pages.fence("plain", "diff") == "```diff\nplain\n```"


def test_the_exercise_tables_say_which_way_a_difference_goes():
    """A verdict is the variant's against the baseline, seed by seed: lower is better, in every table."""
    base, lower, higher = [1.70, 1.71, 1.72], [1.60, 1.62, 1.61], [1.90, 1.92, 1.91]
    compared = {
        "figure": pages.SCHEDULE + " (the cpu preset)",
        "command": "python exercises/compare.py a b c --seeds 3",
        "seeds": [1, 2, 3],
        "steps": 10,
        "val": {"stages/10_gpt.py": base, "lower.py": lower, "higher.py": higher},
        "wall_s": 60,
        "machine": "m",
        "date": "d",
    }
    rows = pages.schedule_table([compared]).splitlines()
    lower_row = next(r for r in rows if r.startswith("| `lower.py`"))
    assert lower_row.endswith(pages.harness.paired_test.verdict(base, lower) + " |")
    assert "| better: 0.1000 lower" in next(r for r in rows if r.startswith("| `lower.py`"))
    assert "| worse: 0.2000 higher" in next(r for r in rows if r.startswith("| `higher.py`"))
    pretrained = {
        "figure": pages.PRETRAINING + "200 steps on tiny Shakespeare, pre-trained vs from scratch",
        "command": "c",
        "pretraining": "p",
        "finetune_lr": 3e-4,
        "scratch_lr": 3e-3,
        "seeds": [1, 2, 3],
        "date": "d",
    }
    worse = pages.pretraining_table([{**pretrained, "pretrained_val": higher, "scratch_val": base}])
    assert "| 200, from scratch | 1.7000 | 1.7100 | 1.7200 | pre-trained worse: 0.2000 higher" in worse
    better = pages.pretraining_table([{**pretrained, "pretrained_val": lower, "scratch_val": base}])
    assert "| pre-trained better: 0.1000 lower" in better


def test_a_record_that_cannot_be_read_is_one_warning_and_no_reference(tmp_path, capsys):
    broken = tmp_path / "runs.json"
    broken.write_text("<<<<<<< HEAD\n{", encoding="utf-8")
    assert harness.references.load_record(broken) == {}
    assert capsys.readouterr().err.startswith(f"warning: {broken} cannot be read (")
