"""tools/pages.py and the record: the pages are what the stages and the recorded runs make, every
figure shown agrees with the record, and every link points at something."""

import ast
import dataclasses
import difflib
import itertools
import re
import textwrap

import pytest

import harness
import harness.training
import tools.stages
from conftest import ROOT
from tools import attention, pages

SOURCES = pages.load_sources()
RECORD = SOURCES.record
STAGES = tools.stages.stage_names()
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
GLOSSARY_LINK = re.compile(r"\[([^\]]+)\]\(\.\./glossary\.md#([\w-]+)\)")


def page_text(stage: str) -> str:
    """A stage's page with its links to the glossary undone: its prose as its sources say it."""
    return GLOSSARY_LINK.sub(r"\1", (pages.PAGES / f"{stage}.md").read_text(encoding="utf-8"))


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


def code_below_docstring(stage: str) -> list[str]:
    source = (tools.stages.STAGE_DIR / f"{stage}.py").read_text(encoding="utf-8")
    return source.splitlines()[ast.parse(source).body[0].end_lineno :]


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.parametrize("stage", STAGES[1:])
def test_each_page_shows_every_code_change_of_todays_diff(stage):
    """The page's hunks, joined, change exactly the lines that today's diff -u changes below the docstring."""
    before = STAGES[STAGES.index(stage) - 1]
    page = page_text(stage)
    shown = [m[2] for m in re.finditer(r"^(`{3,})diff\n(.*?)\n\1$", page, re.DOTALL | re.MULTILINE)]
    today = difflib.unified_diff(code_below_docstring(before), code_below_docstring(stage), lineterm="", n=0)
    assert shown and changed_lines("\n".join(shown)) == changed_lines("\n".join(today))
    assert f"`diff -u stages/{before}.py stages/{stage}.py`" in page


@pytest.mark.parametrize("stage", STAGES[1:])
def test_each_hunks_line_numbers_are_the_whole_files(stage):
    """A hunk's @@ line numbers the lines as they are in the stage files, docstring included."""
    before = STAGES[STAGES.index(stage) - 1]
    lines = {
        name: (tools.stages.STAGE_DIR / f"{name}.py").read_text(encoding="utf-8").splitlines()
        for name in (before, stage)
    }
    for hunk in pages.code_hunks(SOURCES.stages[before], SOURCES.stages[stage]):
        header, first, *_ = hunk.text.splitlines()
        start_a, start_b = map(int, re.match(r"@@ -(\d+)(?:,\d+)? \+(\d+)", header).groups())
        if first.startswith(" "):  # a context line: the same line in both files
            assert lines[before][start_a - 1] == first[1:] == lines[stage][start_b - 1]


def test_each_hunk_is_followed_by_the_reasons_it_adds():
    before = '"""Stage 98: before."""\n\nx = 1\ny = 2\n'
    after = (
        '"""Stage 99: after."""\n\nx = 1\n# Why y doubles: a reason\n# on two lines\ny = 4\n\n\n'
        'def f():\n    """What f does."""\n'
    )
    (hunk,) = pages.code_hunks(before, after)
    assert hunk.text.splitlines()[0] == "@@ -2,3 +2,9 @@"  # numbered as in the files, docstring included
    assert hunk.reasons == ["Why y doubles: a reason on two lines.", "What f does."]
    ended = pages.code_hunks(before, '"""Stage 99."""\n\nx = 1\ny = 3  # (B, T) n_head: a note at the end\n')
    assert ended[0].reasons == ["`y = 3`: n_head: a note at the end."]  # no comment line: the note, not the shape
    assert pages.code_hunks(before, '"""Stage 99: a new lesson."""\n\nx = 1\ny = 2\n') == []  # docstring only
    assert pages.sentence("x is not a word") == "x is not a word." and pages.sentence("a word") == "A word."


def noise_said(noise: float) -> str:
    return f"[run-to-run noise]({pages.NOISE_EXPLAINED}) of ±{noise}"


def test_what_the_idea_bought_weighs_the_change_against_the_noise():
    run = {"val_loss": 2.30}
    noise = harness.training.NOISE
    said = pages.bought("05_b", run, "04_a", {"val_loss": 2.43})
    assert (
        said
        == f"Val loss **2.3000**, against stage 04's 2.4300: **0.1300 lower**, well outside the {noise_said(noise)}."
    )
    assert "**0.0500 higher**, well outside" in pages.bought("07_b", run, "06_a", {"val_loss": 2.25})
    edge = pages.bought("06_b", run, "05_a", {"val_loss": 2.275})  # beyond one run's noise, within two runs'
    assert "0.0250 higher, at the edge of the" in edge and "another seed may not repeat it" in edge
    within = pages.bought("09_b", run, "08_a", {"val_loss": 2.30 + noise / 2})
    assert f"within the {noise_said(noise)}: no difference shown" in within


@pytest.mark.parametrize("stage", STAGES[1:])
def test_each_page_asks_before_it_answers(stage):
    """The stage's question comes before the figures that answer it, and the answer is the record's."""
    page = page_text(stage)
    asked = pages.question(SOURCES.stages[stage])
    before = STAGES[STAGES.index(stage) - 1]
    answer = pages.bought(stage, RECORD["stages"][stage], before, RECORD["stages"][before])
    assert asked and page.index(pages.markdown_safe(asked)) < page.index("## What the idea bought") < page.index(answer)
    assert page.index(answer) < page.index(f"](../images/{pages.curve_image(stage).name})")


def test_stage_01s_page_explains_the_loss_and_shows_the_pipeline():
    page = page_text("01_bigram")
    run = RECORD["stages"]["01_bigram"]
    assert "a loss of ln 65 ≈ 4.17" in page and f"The trained bigram reaches {run['val_loss']:.2f}" in page
    common_source = (ROOT / "common.py").read_text(encoding="utf-8")
    for name in ("def encode", "def split_data", "def get_batch", "def estimate_loss"):
        start = common_source.rindex("\n", 0, common_source.index(name)) + 1  # the line's start, its indent
        assert textwrap.dedent(common_source[start : common_source.index("\n\n", start)]) in page, name
    assert "        loss.backward()\n        optimizer.step()" not in page  # the loop is shown dedented
    assert "    loss.backward()\n    optimizer.step()" in page


def test_each_diff_is_the_lesson_not_the_docstring():
    """diff -u of consecutive stages changes at most 14 lines of the docstring (the Watch: line's two
    among them), and more of the code."""
    for before, stage in itertools.pairwise(STAGES):
        docstrings = [SOURCES.stages[s].splitlines()[: pages.code_lines(SOURCES.stages[s])[0]] for s in (before, stage)]
        in_docstring = changed_lines("\n".join(difflib.unified_diff(*docstrings, lineterm="", n=0)))
        code = difflib.unified_diff(code_below_docstring(before), code_below_docstring(stage), lineterm="", n=0)
        in_code = changed_lines("\n".join(code))
        assert len(in_docstring) <= 14 and len(in_code) > len(in_docstring), (before, stage)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_links_its_minutes_of_the_lecture_and_its_page_opens_with_them(stage):
    minutes, link = pages.watch(SOURCES.stages[stage])
    assert re.fullmatch(r"\d:\d\d:\d\d-\d:\d\d:\d\d, .+", minutes), minutes
    start = sum(int(part) * 60**i for i, part in enumerate(reversed(minutes[:7].split(":"))))
    assert link == f"https://youtu.be/kCc8FmEb1nY?t={start}"  # the link starts where the minutes do
    page = page_text(stage)
    assert page.index(f"[{minutes}]({link})") < page.index(pages.lesson(SOURCES.stages[stage])[:40])


@pytest.mark.parametrize("stage", STAGES)
def test_each_page_has_its_lesson_curve_and_sample(stage):
    page = page_text(stage)
    run = RECORD["stages"][stage]
    assert page.count("\n# ") + page.startswith("# ") == 1 and pages.lesson(SOURCES.stages[stage]) in page
    assert f"python stages/{stage}.py" in page
    assert f"| val loss | {run['val_loss']:.4f} | {harness.training.LECTURE.get((stage, run['preset']), '—')} |" in page
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
        assert harness.training.recorded()[stage, run["preset"]] == run["val_loss"]
    assert ("10_gpt", "video") not in harness.training.recorded()  # never recorded here
    assert "has not measured" in harness.training.judge("10_gpt", "video", True, 1.49)


def test_without_a_record_nothing_is_claimed(tmp_path):
    assert harness.training.load_record(tmp_path / "none.json") == {}
    known = harness.training.measured({})
    assert known == {}
    said = harness.training.judge("09_layer_norm", None, True, 2.06, known)
    assert said.startswith("no reference for 09_layer_norm's defaults: this project has not measured it")
    assert pages.stages_table({}).startswith("No run is recorded yet")
    page = pages.stage_page("02_position_embedding", dataclasses.replace(SOURCES, record={}))
    assert "No run of this stage is recorded yet" in page and "```diff" in page and "## What it writes" not in page


@pytest.mark.parametrize("stage", STAGES)
def test_no_measured_figure_lives_in_a_stages_source(stage):
    """The record holds the figures and the pages show them: a stage's source, re-recorded or not, stays
    the same. No loss, no time, no date, no machine in its docstring or comments."""
    source = SOURCES.stages[stage]
    run = RECORD["stages"][stage]
    for figure in (run["val_loss"], run["train_loss"]):
        for places in (2, 3, 4):
            assert f"{figure:.{places}f}" not in source, (stage, f"{figure:.{places}f}")
    assert not re.search(r"\b\d\.\d{3,4}\b", source), "a loss-like figure: the record and the pages hold those"
    assert not re.search(r"\b\d+(\.\d+)? ?(s|seconds|minutes) (a|per) step|\bin \d+ s\b", source)
    assert "Measured" not in source and RECORD["machine"] not in source
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", source), "a date: the record says when it measured"


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
        'New: one thing.\nPredict: better or worse?\n\nRun: python stages/99.py\n"""\n'
    )
    assert pages.title(source) == "Stage 99: a title"
    assert pages.lesson(source) == "The concept: scaled by `head_size**-0.5`, then softmaxed.\n\nNew: one thing."
    assert pages.question(source) == "better or worse?"
    assert pages.question('"""Stage 99: a title.\n\nNo question.\n"""') is None


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
    assert lower_row.endswith(pages.exercises.paired_test.verdict(base, lower) + " |")
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
    assert harness.training.load_record(broken) == {}
    assert capsys.readouterr().err.startswith(f"warning: {broken} cannot be read (")


def test_stage_10s_attention_map_is_drawn_by_the_command_its_page_shows():
    """The page shows the command that tools/train_all.py runs for the map: two layers, a short line."""
    page = page_text("10_gpt")
    assert pages.fence(pages.attention_command(), "bash") in page
    assert "--prompt $'JULIET:\\nO Romeo!' --layers 1 -1 --out docs/images/attention_10_gpt.png" in page
    args = attention.build_parser().parse_args(pages.attention_flags(ROOT / "ckpt.pt", ROOT / "map.png"))
    assert (args.stage, args.prompt, args.layers) == ("10", "JULIET:\nO Romeo!", [1, -1])
    assert (args.checkpoint, args.out) == (ROOT / "ckpt.pt", ROOT / "map.png")


def test_the_kv_cache_table_shows_both_sizes_and_says_when_the_texts_differ():
    entries = [e for e in SOURCES.results if e["figure"].startswith(pages.KV_CACHE)]
    table = pages.kv_cache_table(SOURCES.results)
    for e in entries:
        assert f"| {e['stage10_chars_per_s']} | {e['cached_chars_per_s']} | {e['speedup']:.2f}x |" in table
    assert "both ways wrote the same text" in table and "DIFFERED" not in table
    differing = [dict(e, same_text=False) if e in entries else e for e in SOURCES.results]
    assert "the texts DIFFERED: a bug" in pages.kv_cache_table(differing)
    assert pages.kv_cache_table([]).startswith("Not measured yet")


def test_the_candidates_table_reads_each_curve_where_its_steps_fit_the_budget():
    """tune_stage10.py's candidates: a curve read between its estimates, at the steps STEP_SECONDS buys."""
    assert pages.curve_at([[0, 4, 4.0], [400, 2, 2.0], [800, 1.5, 1.8]], 600) == pytest.approx(1.9)
    assert pages.curve_at([[0, 4, 4.0], [400, 2, 2.0]], 401) is None  # past the end: not guessed
    stamp = {"machine": "a CPU, 2 cores", "torch": "2.13.0", "date": "2026-12-06"}
    fast = {"name": "fast", "why": "small", "ms_per_step": 1000 * pages.STEP_SECONDS / 600}  # 600 steps fit
    slow = {"name": "slow", "why": "big", "ms_per_step": 1000 * pages.STEP_SECONDS / 200}  # 200 fit
    rows = [
        {**c, "figure": pages.CANDIDATE + c["name"], "curve_measured": stamp, "ms_per_step_measured": stamp}
        for c in (fast, slow)
    ]
    rows[0]["curve"] = [[0, 4, 4.0], [400, 2, 2.0], [800, 1.5, 1.8]]
    rows[1]["curve"] = [[0, 4, 4.0], [400, 1.8, 1.9]]
    table = pages.candidates_table([*rows, {"figure": pages.CANDIDATE + "unmeasured", "name": "unmeasured"}])
    assert "| `fast` | small | 417 |" in table and "**≈ 1.9000** (step 600) |" in table
    assert "| `slow` | big | 1250 |" in table and "**≈ 2.9500** (step 200) |" in table
    assert "unmeasured" not in table  # a candidate without both its curve and its step time is not shown
    assert "a CPU, 2 cores, torch 2.13.0, 2026-12-06" in table


# -- the walkthrough beside each hunk ------------------------------------------------------------------


def test_a_walkthrough_puts_its_prose_under_its_hunk_and_refuses_prose_for_a_hunk_that_changed():
    before, stage = "04_self_attention_head", "05_multi_head_attention"
    hunks = pages.code_hunks(SOURCES.stages[before], SOURCES.stages[stage])
    mine = dataclasses.replace(SOURCES, walkthroughs={stage: f"## {hunks[1].key}\nWhat this hunk does.\n"})
    page = pages.annotated_diff(mine, before, stage)
    assert page.index("What this hunk does.") > page.index(hunks[1].text) > 0
    assert hunks[0].reasons[0] in page  # a hunk without prose keeps the reasons its comments give
    stale = dataclasses.replace(SOURCES, walkthroughs={stage: "## 0123abcd\nProse for code that is gone.\n"})
    with pytest.raises(harness.UserError, match=f"docs/walkthrough/{stage}.md has prose for hunk 0123abcd"):
        pages.annotated_diff(stale, before, stage)


def test_a_hunk_keeps_its_key_when_the_stage_changes_elsewhere():
    before, stage = "04_self_attention_head", "05_multi_head_attention"
    edited = SOURCES.stages[stage].replace(
        "class LanguageModel(nn.Module):", "# a note\nclass LanguageModel(nn.Module):"
    )
    keys = [h.key for h in pages.code_hunks(SOURCES.stages[before], SOURCES.stages[stage])]
    keys_after = [h.key for h in pages.code_hunks(SOURCES.stages[before], edited)]
    assert keys[0] in keys_after and keys[3] in keys_after  # the Config's hunk and the forward pass's


@pytest.mark.parametrize("stage", STAGES[1:])
def test_every_hunk_has_its_walkthrough_and_the_page_answers_its_question_folded(stage):
    before = STAGES[STAGES.index(stage) - 1]
    sections = pages.walkthrough_sections(SOURCES, stage)
    missing = [h.key for h in pages.code_hunks(SOURCES.stages[before], SOURCES.stages[stage]) if h.key not in sections]
    assert not missing, f"docs/walkthrough/{stage}.md has no prose for hunk {missing} (python tools/pages.py --keys)"
    page = page_text(stage)
    folded = page[page.index("<details>") : page.index("</details>")]
    assert sections["answer"] in folded and folded.index("Val loss **") < folded.index(sections["answer"])


@pytest.mark.parametrize("stage", STAGES)
def test_each_page_draws_its_model_with_the_new_part_marked(stage):
    page = page_text(stage)
    drawn = page[page.index("## The model") :]
    drawn = drawn[drawn.index("```mermaid") : drawn.index("```", drawn.index("```mermaid") + 3)]
    assert re.search(r"^  class \w+(,\w+)* new$", drawn, re.MULTILINE), drawn
    assert page.index("## The model") < page.index("## Predict, then run")


# -- the glossary's words, linked from each page ------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


GLOSSARY_TEXT = (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8")
ANCHORS = {github_anchor(h) for h in re.findall(r"^### (.+)$", GLOSSARY_TEXT, re.MULTILINE)}  # the entries


def prose(page: str) -> str:
    """What a page says outside code, Mermaid, headings, tables, HTML and the links of its own (the
    glossary's links kept): the text a glossary word may be linked in."""
    page = re.sub(r"^(`{3,}).*?^\1$", "", page, flags=re.DOTALL | re.MULTILINE)
    page = re.sub(r"(`+).+?\1", "", page, flags=re.DOTALL)
    page = re.sub(r"^[#|<].*$", "", page, flags=re.MULTILINE)
    return re.sub(r"!?\[[^\]]*\]\((?!\.\./glossary\.md#)[^)]*\)", "", page)


def test_the_glossary_words_are_its_headings_and_its_bold_words_with_their_plurals():
    words = pages.glossary_words(GLOSSARY_TEXT)
    assert words["softmax"] == "softmax" and words["logits"] == "logits"
    assert words["loss"] == words["losses"] == words["nats"] == "loss-cross-entropy"  # the brackets left out
    assert words["val split"] == words["train split"] == "train-and-val-split"  # the entry's bold words
    assert words["queries"] == words["keys"] == "query-key-and-value" and words["batches"] == "batch"
    assert words["heads"] == words["multi-head"] == "head-and-head_size"
    assert "head" not in words  # a bare "head" is as often lm_head: the glossary does not bold it
    assert set(words.values()) <= ANCHORS


def test_a_words_first_use_in_prose_links_its_entry_and_nothing_else_is_touched():
    glossary = "# Glossary\n\n### Softmax\n\nexp over a sum.\n\n### Loss (cross-entropy)\n\nIn **nats**.\n"
    page = (
        "# Softmax\n\n<!-- softmax -->\n\n```mermaid\nsoftmax\n```\n\nSee `softmax` and [softmax](x.md).\n\n"
        "| softmax |\n\n<details><summary>softmax</summary>\n\nThe Softmax of losses, in nats; the softmax again.\n"
    )
    linked = pages.link_glossary(page, glossary)
    assert linked == page.replace(
        "The Softmax of losses, in nats",
        "The [Softmax](../glossary.md#softmax) of [losses](../glossary.md#loss-cross-entropy), in nats",
    )  # nats is the loss's entry too, linked once already; code, headings, links, tables and HTML keep theirs
    assert pages.link_glossary("pre-softmax, softmax_fn, lossy", glossary) == "pre-softmax, softmax_fn, lossy"  # words
    spread = pages.link_glossary("one loss\nestimate", "### Loss estimate\n\nA mean.\n")
    assert spread == "one [loss\nestimate](../glossary.md#loss-estimate)"  # a term broken across lines


@pytest.mark.parametrize("stage", STAGES)
def test_each_page_links_the_first_use_of_each_glossary_word_to_its_entry(stage):
    page = (pages.PAGES / f"{stage}.md").read_text(encoding="utf-8")
    anchors = [anchor for _, anchor in GLOSSARY_LINK.findall(page)]
    assert len(anchors) >= 4 and len(anchors) == len(set(anchors)), anchors  # each entry once
    assert set(anchors) <= ANCHORS, "a link to an entry the glossary does not have"
    words = pages.glossary_words(GLOSSARY_TEXT)
    forms = "|".join(re.escape(w).replace("\\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    said, first = prose(page), {}  # a longer word wins: "loss estimate" is not a use of "loss"
    for found in re.finditer(rf"(?<![\w-])(?:{forms})(?![\w-])", said, re.IGNORECASE):
        first.setdefault(words[" ".join(found[0].lower().split())], found)
    assert set(first) == set(anchors), "an entry whose words the prose uses is not linked, or the reverse"
    for anchor, found in first.items():
        assert said[found.start() - 1] == "[", f"the first use of {found[0]!r} is not linked"
        assert said[found.end() :].startswith(f"](../glossary.md#{anchor})"), (found[0], anchor)


@pytest.mark.parametrize("stage", STAGES)
def test_no_glossary_link_stands_in_code_a_heading_or_a_drawing(stage):
    page = (pages.PAGES / f"{stage}.md").read_text(encoding="utf-8")
    fenced = re.compile(r"^(`{3,}).*?^\1$", re.DOTALL | re.MULTILINE)
    blocks = [m[0] for m in fenced.finditer(page)]
    inline = re.findall(r"`[^`\n]+`", fenced.sub("", page))
    headings = re.findall(r"^#.*$", page, re.MULTILINE)
    assert not [text for text in blocks + inline + headings if "glossary.md" in text]
    unlinked = " ".join(blocks + inline + headings).lower()  # they do use the glossary's words, unlinked
    assert [w for w in pages.glossary_words(GLOSSARY_TEXT) if re.search(rf"(?<![\w-]){re.escape(w)}\b", unlinked)]


def test_the_links_are_the_only_change_the_glossary_makes_to_a_page():
    without = dataclasses.replace(SOURCES, glossary="")
    for stage in ("01_bigram", "04_self_attention_head"):
        linked = pages.stage_page(stage, SOURCES)
        assert GLOSSARY_LINK.search(linked) and GLOSSARY_LINK.sub(r"\1", linked) == pages.stage_page(stage, without)
