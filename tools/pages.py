"""Make the lesson's pages: one a stage, and the tables of the README and docs/, from what was measured.

    python tools/pages.py            write each page and table that is not what it should be
    python tools/pages.py --check    write nothing: name each file that is out of date (exit status 1)

Nothing here trains. The figures come from the record: docs/runs.json (what `python
tools/train_all.py` measured, stage by stage) and benchmarks/results.json (the benchmarks' and the
exercises' measurements). The lesson's text comes from each stage's docstring, the code diffs from
the stages themselves, the prose beside them from docs/walkthrough/, and each page links the first
use of a word of docs/glossary.md to its entry there. What it writes:

  docs/stages/<stage>.md     the stage's lesson, how to run it, what it measured beside the
                             lecture's figure, its curve, the diff against the stage before it and
                             its closing sample (stage 10's also shows what dropout is for)
  docs/images/curve_*.png    each stage's train and val loss (with matplotlib installed)
  README.md, docs/*.md       the text between `<!-- made by tools/pages.py: NAME -->` and
                             `<!-- end of NAME -->`; the rest of each file is written by hand
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root
import common  # noqa: E402
import exercises.finetuning  # noqa: E402
import exercises.paired_test  # noqa: E402
import harness  # noqa: E402
import harness.checkpoints  # noqa: E402
import harness.cli  # noqa: E402
import harness.training  # noqa: E402
import tools.stages  # noqa: E402
from tools import plot  # noqa: E402

DOCS = common.ROOT / "docs"
PAGES = DOCS / "stages"
IMAGES = DOCS / "images"
WALKTHROUGH = common.ROOT / "docs" / "walkthrough"  # the prose under each hunk of a stage's diff, by hand
RESULTS = common.ROOT / "benchmarks" / "results.json"
GLOSSARY = DOCS / "glossary.md"
COMMON = common.ROOT / "common.py"
NOISE_EXPLAINED = "../README.md#how-far-to-trust-a-figure"  # from a stage's page
# a block is the lines between its opening and its end, each a line of its own (prose may name them)
BLOCK = re.compile(r"^<!-- made by tools/pages\.py: ([\w-]+) -->\n(.*?)^<!-- end of \1 -->$", re.DOTALL | re.MULTILINE)
OPENING = re.compile(r"^<!-- made by tools/pages\.py: ([\w-]+) -->$", re.MULTILINE)
DROPOUT = "stage 10 with and without dropout"
SCHEDULE = "exercise 4: nanoGPT's learning-rate schedule against stage 10"
ADDITION = "exercise 2: 5-digit addition, answer "
CALCULATOR = "exercise 2: calculator, "
PRETRAINING = "exercise 3: val loss after "
FINETUNING = "exercise 6: "
THREE = "exercise 4: three worked solutions against stage 10"


@dataclasses.dataclass
class Sources:
    """What the pages are made from."""

    record: dict  # docs/runs.json
    results: list[dict]  # benchmarks/results.json's entries
    stages: dict[str, str]  # stage name -> its source
    walkthroughs: dict[str, str] = dataclasses.field(default_factory=dict)  # stage -> docs/walkthrough/<stage>.md
    glossary: str = ""  # docs/glossary.md


def load_sources() -> Sources:
    results = json.loads(RESULTS.read_text(encoding="utf-8"))["results"]
    stages = {s: (tools.stages.STAGE_DIR / f"{s}.py").read_text(encoding="utf-8") for s in tools.stages.stage_names()}
    walkthroughs = {s: path.read_text(encoding="utf-8") for s in stages if (path := WALKTHROUGH / f"{s}.md").exists()}
    glossary = GLOSSARY.read_text(encoding="utf-8")
    return Sources(harness.training.load_record(), results, stages, walkthroughs, glossary)


def entry(results: list[dict], prefix: str) -> dict | None:
    """The results.json entry whose figure starts with prefix (the last one, if several)."""
    found = [r for r in results if r["figure"].startswith(prefix)]
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------
# the stages' table


def measured_by(record: dict) -> str:
    note = f"; {record['note']}" if record.get("note") else ""
    return (
        f"Measured by `{record['command']}` on {record['machine']}, torch {record['torch']}, "
        f"{record['date']}{note} (the record: `docs/runs.json`)"
    )


def number_or_dash(value: float | None, spec: str) -> str:
    """A figure as the tables show it; a dash for one the run did not give (no estimate, no count)."""
    return "—" if value is None else format(value, spec)


def stages_table(record: dict, links: bool = True, sources: dict[str, str] | None = None) -> str:
    """The table of the recorded runs, one row a stage; with links, each stage's number links its page;
    with the stages' sources, each concept links its minutes of the lecture."""
    if not record.get("stages"):
        return "No run is recorded yet: `python tools/train_all.py` trains every stage and records them."
    rows = [header("stage", "concept", "parameters", "val loss", "the lecture's", "time")]
    for stage, run in record["stages"].items():
        number = f"[{stage[:2]}](docs/stages/{stage}.md)" if links else stage[:2]
        concept = run["concept"] + (f" (preset {run['preset']})" if run.get("preset") else "")
        minutes = watch(sources[stage]) if sources and stage in sources else None
        if minutes is not None:
            concept += f" ([{minutes[0].split(',')[0]}]({minutes[1]}))"
        lecture = harness.training.LECTURE.get((stage, run.get("preset")), "—")
        figures = [number_or_dash(run["parameters"], ","), number_or_dash(run["val_loss"], ".4f")]
        cells = [number, concept, *figures, lecture, f"{run['wall_time_s']} s"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return measured_by(record) + ".\n\n" + "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# a stage's page


def docstring(source: str) -> str:
    return ast.get_docstring(ast.parse(source)) or ""


def title(source: str) -> str:
    """ "Stage 02: token and position embeddings, with a linear head." """
    return docstring(source).splitlines()[0].rstrip(".")


def markdown_safe(text: str) -> str:
    """A power written as x**y would open bold text in Markdown: such a word becomes code."""
    return re.sub(r"(\S+\*\*\S+?)([.,:;)]?)(?=\s|$)", r"`\1`\2", text)


def lesson(source: str) -> str:
    """The docstring's lesson as Markdown: its paragraphs without the title, the Predict: line (the page
    asks it before the figures answer it), the Watch: line (the page links it) and the Run: line (the
    page shows the command); the "New:" line a paragraph of its own."""
    paragraphs, lines = [], []
    for line in docstring(source).splitlines()[1:] + [""]:
        if line.startswith(("Predict:", "Watch:", "Run:")):
            continue
        if line.startswith("New:") or not line.strip():
            if lines:
                paragraphs.append(" ".join(lines))
            lines = []
        if line.strip():
            lines.append(line.strip())
    return "\n\n".join(markdown_safe(p) for p in paragraphs)


def watch(source: str) -> tuple[str, str] | None:
    """The docstring's "Watch:" line: the lecture's minutes for this stage, and their link."""
    found = re.search(r"^Watch: (.+): (https://\S+)$", docstring(source), re.MULTILINE)
    return (found[1], found[2]) if found else None


def question(source: str) -> str | None:
    """The docstring's "Predict:" question, without the word; None when it asks none."""
    found = re.search(r"^Predict: (.+)$", docstring(source), re.MULTILINE)
    return found[1] if found else None


def fence(text: str, language: str) -> str:
    """A fenced block that no run of backticks inside text can close early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    body = text.rstrip("\n")  # only the newlines: a diff's last context line may be a lone space
    return f"{marks}{language}\n{body}\n{marks}"


def code_lines(source: str) -> tuple[int, list[str]]:
    """(the docstring's line count, the lines after it): the code, comments included."""
    lines = source.splitlines()
    end = ast.parse(source).body[0].end_lineno
    return end, lines[end:]


HUNK_HEADER = re.compile(r"^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@$")


@dataclasses.dataclass
class Hunk:
    text: str  # the hunk as `diff -u` prints it, its @@ line first
    reasons: list[str]  # the comments and one-line docstrings it adds, a paragraph each

    @property
    def key(self) -> str:
        """What the hunk changes, in 8 characters: its walkthrough's key. Its line numbers and the lines
        around it are left out, so an edit elsewhere in the stage keeps it."""
        changed = [line for line in self.text.splitlines()[1:] if line.startswith(("+", "-"))]
        return hashlib.sha1("\n".join(changed).encode()).hexdigest()[:8]


# What a page links no word in: a fenced block (code, a diff, a Mermaid drawing), an HTML comment, a line that
# is a heading, a table's row or HTML, inline code, a link or an image
UNLINKED = r"^(`{3,})[^\n]*\n.*?^\1$|<!--.*?-->|^[#|<][^\n]*|(`+).+?\2|!?\[[^\]]*\]\([^)]*\)"


def glossary_words(glossary: str) -> dict[str, str]:
    """Each word of docs/glossary.md, and its plurals (s, es, ies) -> its entry's anchor. An entry's words
    are its heading without a part in brackets, and the words in bold in its text."""
    words = {}
    for name, text in re.findall(r"^### ([^\n]+)\n(.*?)(?=^#|\Z)", glossary, re.MULTILINE | re.DOTALL):
        anchor = re.sub(r"[^\w\- ]", "", name.lower()).replace(" ", "-")  # as GitHub anchors a heading
        for word in [re.sub(r" \(.*\)", "", name).lower(), *(w.lower() for w in re.findall(r"\*\*(.+?)\*\*", text))]:
            for form in (word, word + "s", word + "es", re.sub("y$", "ies", word)):
                words.setdefault(form, anchor)
    return words


def link_glossary(page: str, glossary: str) -> str:
    """The page with the first use in its prose of each glossary entry's words linked to the entry."""
    words, linked = glossary_words(glossary), set()
    forms = "|".join(re.escape(f).replace("\\ ", r"\s+") for f in sorted(words, key=len, reverse=True))

    def link(found: re.Match) -> str:
        anchor = words.get(" ".join(found[0].lower().split()))
        if anchor is None or anchor in linked:
            return found[0]
        linked.add(anchor)
        return f"[{found[0]}](../glossary.md#{anchor})"

    return re.sub(rf"{UNLINKED}|(?<![\w-])(?:{forms})(?![\w-])", link, page, flags=re.I | re.M | re.S)


def walkthrough_sections(sources: Sources, stage: str) -> dict[str, str]:
    """The sections of docs/walkthrough/<stage>.md by their heading: a hunk's key, "answer" or "model"."""
    text = sources.walkthroughs.get(stage, "")
    found = re.finditer(r"^## ([0-9a-f]{8}|answer|model)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return {m[1]: m[2].strip() for m in found}


def walkthrough(sources: Sources, stage: str, hunks: list[Hunk]) -> dict[str, str]:
    """docs/walkthrough/<stage>.md: the prose under each hunk it has written, by the hunk's key. Prose
    kept for a hunk that has changed since is refused: it would explain code that is not there."""
    prose = {k: v for k, v in walkthrough_sections(sources, stage).items() if k not in ("answer", "model")}
    stale = sorted(prose.keys() - {h.key for h in hunks})
    if stale:
        raise harness.UserError(
            f"docs/walkthrough/{stage}.md has prose for hunk {', '.join(stale)}, which the diff no longer has: "
            f"rewrite it for the hunk as it is now (python tools/pages.py --keys {stage[:2]} lists them)"
        )
    return prose


def code_hunks(before: str, after: str) -> list[Hunk]:
    """The hunks of `diff -u before after` below the docstrings, numbered as in the whole files: the
    code's changes, each with the reasons it adds (the page shows the docstring's lesson above)."""
    offset_a, code_a = code_lines(before)
    offset_b, code_b = code_lines(after)
    hunks: list[list[str]] = []
    for line in list(difflib.unified_diff(code_a, code_b, lineterm=""))[2:]:  # past the ---/+++ lines
        header = HUNK_HEADER.match(line)
        if header:
            start_a, start_b = int(header[1]) + offset_a, int(header[3]) + offset_b
            hunks.append([f"@@ -{start_a}{header[2] or ''} +{start_b}{header[4] or ''} @@"])
        else:
            hunks[-1].append(line)
    return [Hunk("\n".join(lines), reasons(lines)) for lines in hunks]


def reasons(hunk: list[str]) -> list[str]:
    """The comments a hunk adds, each run of comment lines one paragraph, and its one-line docstrings:
    the why of the lines it adds, as sentences. Without them, the notes at the ends of the lines it adds."""
    paragraphs: list[list[str]] = []
    for comment, lines in itertools.groupby(hunk, lambda line: bool(re.match(r"\+\s*#", line))):
        added = [line[1:].strip() for line in lines if line.startswith("+")]
        if comment:  # a run of added comment lines: one paragraph
            paragraphs.append([text.lstrip("#").strip() for text in added])
        else:  # each added one-line docstring: a paragraph of its own
            paragraphs += [[doc[1]] for text in added if (doc := re.fullmatch(r'"""(.+)"""', text))]
    if not paragraphs:  # no comment of its own: the notes at the ends of the lines it adds, beyond shapes
        return [f"`{code}`: {markdown_safe(note.rstrip('.'))}." for code, note in map(end_note, hunk) if note]
    return [sentence(" ".join(p)) for p in paragraphs]


def end_note(line: str) -> tuple[str, str]:
    """An added line's code and the note at its end, without a leading shape: ("x = f(x)", "why")."""
    if not line.startswith("+") or "  # " not in line:
        return "", ""
    code, note = line[1:].split("  # ", 1)
    note = re.sub(r"^\([^)]*\)\s*:?\s*", "", note)  # "(B, T, C) the block adds" -> "the block adds"
    return code.strip(), note if len(note.split()) > 1 else ""


def sentence(text: str) -> str:
    """A comment as prose: a capital first letter (not on a name like n_head or x), a full stop at the end,
    a power as code."""
    first = text.split(" ", 1)[0]
    if first.isalpha() and (len(first) > 1 or first == "a"):
        text = text[:1].upper() + text[1:]
    return markdown_safe(text if text.endswith((".", "?", "!", ")")) else text + ".")


def annotated_diff(sources: Sources, before: str, after: str) -> str:
    """The code diff hunk by hunk, each followed by its walkthrough, or else by the reasons it adds."""
    hunks = code_hunks(sources.stages[before], sources.stages[after])
    prose = walkthrough(sources, after, hunks)
    parts = [f"`diff -u stages/{before}.py stages/{after}.py`, below the docstring, hunk by hunk."]
    for hunk in hunks:
        parts.append(fence(hunk.text, "diff"))
        parts += [prose[hunk.key]] if hunk.key in prose else hunk.reasons
    return "\n\n".join(parts)


def curve_image(stage: str) -> Path:
    return IMAGES / f"curve_{stage}.png"


def header(*columns: str) -> str:
    """A markdown table's first two lines: its columns' names, and the line under them."""
    return "| " + " | ".join(columns) + " |\n" + "| --- " * len(columns) + "|"


def measured_table(stage: str, run: dict, record: dict) -> str:
    preset = run.get("preset")
    lecture = harness.training.LECTURE.get((stage, preset), "—")
    rows = [
        "| | measured here | the lecture's |",
        "| --- | --- | --- |",
        f"| val loss | {number_or_dash(run['val_loss'], '.4f')} | {lecture} |",
        f"| train loss | {number_or_dash(run['train_loss'], '.4f')} | |",
        f"| parameters | {number_or_dash(run['parameters'], ',')} | |",
        f"| steps | {number_or_dash(run['steps'], ',')}" + (f" (preset {preset})" if preset else "") + " | |",
        f"| time, the whole run | {run['wall_time_s']} s | |",
    ]
    said = f"{measured_by(record)}:\n\n" + "\n".join(rows)
    video = harness.training.LECTURE.get((stage, "video")) if preset and preset != "video" else None
    if video:  # the lecture's own run is another preset's: say what differs
        lecture = stage_config(stage, "video")
        said += (
            f"\n\nThe lecture trains only the `video` preset, on a GPU: its val loss is "
            f"{video.split(' (')[0].replace('≈', 'about')}. That is "
            f"{lecture.n_layer} blocks at the sizes of the stage's Config, "
            f"for {lecture.max_iters:,} steps; the run above is the `{preset}` "
            "preset, smaller and shorter, to finish in minutes on a CPU."
        )
    return said


def bought(stage: str, run: dict, previous: str, previous_run: dict) -> str:
    """The val loss against the previous stage's, weighed against the run-to-run noise: a difference of two
    runs is clear only beyond twice the noise of one."""
    val, before = run["val_loss"], previous_run["val_loss"]
    if val is None or before is None:
        return f"Stage {stage[:2]} or stage {previous[:2]} has no val loss in the record: nothing to compare."
    change = val - before
    noise = harness.training.NOISE
    band = f"[run-to-run noise]({NOISE_EXPLAINED}) of ±{noise}"
    way = "lower" if change < 0 else "higher"
    if abs(change) <= noise:
        said = f"a change of {change:+.4f}, within the {band}: no difference shown"
    elif abs(change) <= 2 * noise:  # each of the two runs moves by the noise: their difference by up to twice it
        said = f"{abs(change):.4f} {way}, at the edge of the {band} of each run: another seed may not repeat it"
    else:
        said = f"**{abs(change):.4f} {way}**, well outside the {band}"
    return f"Val loss **{val:.4f}**, against stage {previous[:2]}'s {before:.4f}: {said}."


def stage_config(stage: str, preset: str | None):
    """A stage's Config at its defaults, with its preset applied."""
    module = tools.stages.load_stage(stage)
    return module.Config(**(getattr(module, "PRESETS", {}).get(preset, {}) if preset else {}))


def scale_up(stage: str, run: dict, previous: str, previous_run: dict) -> str:
    """Stage 10's gain, said for what it is: the sizes grew, and dropout alone does not lower the loss here."""
    before, after = stage_config(previous, previous_run.get("preset")), stage_config(stage, run.get("preset"))
    return (
        f"Most of this is the scale-up: a context of {before.block_size} characters grows to {after.block_size}, "
        f"{before.n_embd} channels to {after.n_embd}, {before.n_layer} blocks to {after.n_layer}. Dropout alone "
        "does not lower the loss of a run this short: [what dropout is for](#what-dropout-is-for), below, shows "
        "where it does."
    )


def unlike(stage: str, run: dict, previous: str, previous_run: dict) -> str:
    """A sentence when the curve is drawn over a run of another recipe; "" when the two train alike."""
    cfg, before = stage_config(stage, run.get("preset")), stage_config(previous, previous_run.get("preset"))
    tokens, tokens_before = cfg.batch_size * cfg.block_size, before.batch_size * before.block_size
    differ = []
    if cfg.learning_rate != before.learning_rate:
        differ.append(f"at a rate of {cfg.learning_rate:g} against {before.learning_rate:g}")
    if tokens != tokens_before:
        differ.append(f"on {tokens:,} tokens a step against {tokens_before:,}")
    if not differ:
        return ""
    return (
        f"The two curves are not like for like: stage {stage[:2]} trains {' and '.join(differ)} in stage "
        f"{previous[:2]}. Compare where each ends, not their steps."
    )


def draw_curve(stage: str, run: dict, previous: tuple[str, dict] | None, out: Path) -> Path:
    """This stage's train and val loss, over the previous stage's val loss. The vertical scale leaves
    out the first estimate (the untrained model, far above the rest), to show where the curves differ."""
    fig = plot.new_figure(figsize=(9, 5), dpi=100)
    ax = fig.add_subplot()
    steps, train, val = zip(*run["history"], strict=True)
    ax.plot(steps, val, "-", color="tab:orange", linewidth=2, label=f"stage {stage[:2]}: val")
    ax.plot(steps, train, "--", color="tab:blue", label=f"stage {stage[:2]}: train")
    if previous is not None:
        name, before = previous
        before_steps, _, before_val = zip(*before["history"], strict=True)
        ax.plot(before_steps, before_val, "-", color="grey", label=f"stage {name[:2]}: val, the stage before")
        later = [v for _, t, v in run["history"][1:] for v in (t, v)] + list(before_val[1:])
        later = later or [*train, *val, *before_val]  # one estimate each: nothing to leave out
        top, bottom = max(later), min(later)
        margin = 0.1 * (top - bottom) or 0.05
        ax.set_ylim(bottom - margin, top + margin)
        first = max(val[0], train[0], before_val[0])
        cut = f" (the first estimate, {first:.1f}, is off the scale)" if first > top + margin else ""
        ax.set_title(f"Stage {stage[:2]} over stage {name[:2]}{cut}")
    else:
        ax.set_title(f"Stage {stage[:2]}: loss during training")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per character)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return plot.save_figure(fig, out)


def pipeline_section(sources: Sources) -> str:
    """Stage 01's page: the pipeline every stage is built on, as the code that runs it."""
    text = COMMON.read_text(encoding="utf-8")
    named = {n.name: n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.ClassDef)}

    def code(name: str) -> str:
        node = named[name]
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        return "\n".join(text.splitlines()[start - 1 : node.end_lineno])

    stage = sources.stages["01_bigram"]
    loop = re.search(
        r"^    for step in trainer\.steps\(\).*?trainer\.count_step\(loss\).*?$", stage, re.DOTALL | re.MULTILINE
    )
    steps = [
        (
            "Text to ids: each character gets an integer, and back (`common.py`).",
            code("encode") + "\n\n\n" + code("decode"),
        ),
        ("The split: the first 90% of the text trains, the last 10% validates.", code("split_data")),
        ("A batch: random windows, the targets one character after the inputs.", code("get_batch")),
        ("The loss estimate: the mean over many batches, in eval mode.", code("estimate_loss")),
        ("The loop, in `stages/01_bigram.py`: estimate now and then, then one step on one batch.", loop[0]),
    ]
    parts = ["## The pipeline, in code", "Every stage runs on these parts. Only the model changes."]
    for k, (said, shown) in enumerate(steps, 1):
        parts += [f"{k}. {said}", fence(textwrap.dedent(shown), "python")]
    return "\n\n".join(parts)


def loss_section(run: dict | None) -> str:
    """Stage 01's page: what the loss means, once, in this run's figures."""
    parts = [
        "## The loss",
        "The loss is the cross-entropy of the next character. For each position, the model gives every "
        "character a probability. The loss is the mean of −ln p, where p is the probability it gave the right one.",
    ]
    vocab = math.isqrt(run["parameters"]) if run else 0  # the bigram's table is vocab x vocab
    if run is None or not run["history"] or vocab * vocab != run["parameters"]:
        return "\n\n".join(parts)
    first = run["history"][0][2]
    parts.append(
        f"A uniform guess over the {vocab} characters gives p = 1/{vocab}, a loss of ln {vocab} ≈ "
        f"{math.log(vocab):.2f}. The untrained model starts at {first:.2f}, {first - math.log(vocab):.2f} "
        f"{'above' if first > math.log(vocab) else 'below'} it: its random table is not uniform. "
        f"The trained bigram reaches {run['val_loss']:.2f}. That is e^{run['val_loss']:.2f} ≈ "
        f"{math.exp(run['val_loss']):.0f}: as unsure as a fair choice among {math.exp(run['val_loss']):.0f} "
        "characters, where the uniform guess is as unsure as a choice among all of them."
    )
    return "\n\n".join(parts)


def stage_page(stage: str, sources: Sources) -> str:
    names = list(sources.stages)
    i = names.index(stage)
    source = sources.stages[stage]
    runs = sources.record.get("stages", {})
    run = runs.get(stage)
    previous = names[i - 1] if i > 0 else None
    nav = ["[all stages](../README.md)"]
    if previous:
        nav.insert(0, f"[← {previous[:2]}]({previous}.md)")
    if i + 1 < len(names):
        nav.append(f"[{names[i + 1][:2]} →]({names[i + 1]}.md)")
    parts = [
        "<!-- made by tools/pages.py from the stage, docs/runs.json and benchmarks/results.json: "
        "edit those, then run it -->",
        " · ".join(nav),
        f"# {title(source)}",
    ]
    if (minutes := watch(source)) is not None:
        parts.append(f"**In the lecture:** [{minutes[0]}]({minutes[1]})")
    parts += [lesson(source)]
    if (drawn := walkthrough_sections(sources, stage).get("model")) is not None:
        parts += ["## The model", drawn]
    if previous is None:
        parts += [loss_section(run), pipeline_section(sources)]
    asked = question(source)
    parts += ["## Predict, then run"] + ([f"**Predict:** {markdown_safe(asked)}"] if asked else [])
    parts += [fence(f"python stages/{stage}.py", "bash")]
    if run is None:
        parts += ["No run of this stage is recorded yet: `python tools/train_all.py` trains it and records it."]
    else:
        compared = previous is not None and previous in runs
        parts.append("## What the idea bought" if compared else "## What it measured")
        if compared:  # folded: the learner predicts first
            parts += ["<details><summary>Predict first, then open: what the run measured, and why</summary>"]
            parts.append(bought(stage, run, previous, runs[previous]))
            parts += [answer] if (answer := walkthrough_sections(sources, stage).get("answer")) else []
            if stage == "10_gpt":
                parts.append(scale_up(stage, run, previous, runs[previous]))
        image = f"![train and val loss of stage {stage[:2]} during training](../images/{curve_image(stage).name})"
        parts += [image]
        if compared and (note := unlike(stage, run, previous, runs[previous])):
            parts.append(note)
        parts += [measured_table(stage, run, sources.record)] + (["</details>"] if compared else [])
    if previous:
        parts += [f"## What changed from stage {previous[:2]}", annotated_diff(sources, previous, stage)]
    if stage == "10_gpt":
        parts += [dropout_section(sources.results), attention_section()]
    if run is not None:
        parts += [
            "## What it writes",
            "The closing sample of the recorded run (500 characters from a newline, temperature 1):",
            fence(run["sample"], "text"),
        ]
    return link_glossary("\n\n".join(parts) + "\n", sources.glossary)


def dropout_section(results: list[dict]) -> str:
    head = "## What dropout is for"
    why = (
        "A five-minute run on all of tiny Shakespeare never reads a character often enough to memorise it. "
        "There, dropout only slows learning down. `python tools/dropout.py` gives it a run where it matters. "
        "It trains stage 10 at its `cpu` preset on the first 50,000 characters only: 45,000 to train on, the "
        "last 5,000 to validate on. In 1,000 steps it reads each training character about 45 times. It runs "
        "once with `--dropout 0` and once at the preset's rate.\n\n"
        "**Predict:** which run will memorise its text, and how will its val loss show it?"
    )
    found = entry(results, DROPOUT)
    if found is None:
        return f"{head}\n\n{why}\n\nNot measured yet."
    rows = [header("step", *(c for r in found["histories"] for c in (f"dropout {r}: train", "val", "gap")))]
    for estimates in zip(*found["histories"].values(), strict=True):
        cells = [f"{t:.4f} | {v:.4f} | {v - t:+.4f}" for _, t, v in estimates]
        rows.append(f"| {estimates[0][0]} | " + " | ".join(cells) + " |")
    measured = (
        f"Measured by `{found['command']}` on {found['machine']}, torch {found['torch']}, {found['date']}. "
        f"The two runs took {found['wall_s'] / 60:.0f} minutes:"
    )
    image = "![stage 10 with and without dropout on a text small enough to memorise](../images/dropout_10_gpt.png)"
    return "\n\n".join([head, why, measured, "\n".join(rows), image, dropout_answer(found["histories"])])


def dropout_answer(histories: dict[str, list[list[float]]]) -> str:
    """What the two runs of tools/dropout.py show, in their own figures: where each val loss bottomed out
    and ended, and how far it ended above the train loss."""
    said, gaps = [], {}
    for rate, history in histories.items():
        step, _, lowest = min(history, key=lambda estimate: estimate[2])
        _, train, val = history[-1]
        gaps[float(rate)] = val - train
        name = "Without dropout" if float(rate) == 0 else f"With dropout {rate}"
        said.append(
            f"{name}, the train loss ends at {train:.2f}. The val loss bottoms out at {lowest:.2f} (step {step}) "
            f"and ends at {val:.2f}, {val - train:.2f} above the train loss."
        )
    if 0.0 in gaps and len(gaps) > 1:
        smaller = all(gap < gaps[0.0] for rate, gap in gaps.items() if rate)
        said.append(
            "Dropout keeps the gap smaller: it slows the memorising down, which a longer run on the whole text "
            "needs from it."
            if smaller
            else "Here dropout did not keep the gap smaller."
        )
    return " ".join(said)


# Stage 10's attention map: the first and last layers' heads over a short line, so that each character
# stays legible at the width a repository's page shows it. tools/train_all.py draws it from the recorded
# run's checkpoint, with the other figures.
ATTENTION_PROMPT = "JULIET:\nO Romeo!"
ATTENTION_LAYERS = ["1", "-1"]
ATTENTION_IMAGE = IMAGES / "attention_10_gpt.png"


def attention_flags(checkpoint: Path | None = None, out: Path | None = None) -> list[str]:
    """tools/attention.py's arguments for the page's map: from checkpoint (default: the stage's own), to out
    (default: the page's image, from the project's root)."""
    where = ["--checkpoint", str(checkpoint)] if checkpoint else []
    out = out or ATTENTION_IMAGE.relative_to(common.ROOT)
    return ["10", "--prompt", ATTENTION_PROMPT, "--layers", *ATTENTION_LAYERS, *where, "--out", str(out)]


def attention_command() -> str:
    """The map's command as a learner types it in bash: the prompt's newline written $'...\\n...'."""
    flags = attention_flags()
    prompt = flags.index("--prompt") + 1
    flags[prompt] = "$'" + flags[prompt].replace("\n", "\\n") + "'"
    return "python tools/attention.py " + " ".join(flags)


def draw_attention(checkpoint: Path) -> Path:
    """Stage 10's attention map for its page, from the trained checkpoint (needs matplotlib)."""
    from tools import attention  # only here: the pages themselves never load a model

    attention.attention_main(attention_flags(checkpoint, ATTENTION_IMAGE))
    return ATTENTION_IMAGE


def attention_section() -> str:
    return "\n\n".join(
        [
            "## Looking inside: attention",
            "`python tools/attention.py 10` draws where each head looks, one map a head, from the trained "
            "checkpoint. [Looking inside](../looking-inside.md) says how to read the maps. Here are the first and "
            "last layers of stage 10 trained at its defaults, on the start of Juliet's line:",
            fence(attention_command(), "bash"),
            "![attention maps of stage 10's first and last layers](../images/attention_10_gpt.png)",
        ]
    )


# ----------------------------------------------------------------------------------------------
# the tables of the README and docs/


def addition_table(results: list[dict]) -> str:
    """Exercise 2's worked solution: 5-digit addition seed by seed, then the calculator's attempts."""
    rows = [header("run", "flags", "held-out exact match", "training")]
    measured = []
    for order, flags in (("reversed", ""), ("usual order", "--no-reverse ")):
        found = entry(results, ADDITION + order)
        if found is None:
            continue
        measured.append(found)
        for seed, accuracy, seconds in zip(found["seeds"], found["accuracy_pct"], found["train_s"], strict=True):
            said = f"`{flags}--seed {seed}`"
            rows.append(
                f"| 5-digit addition, answer {order}, seed {seed} | {said} | {accuracy:.1f}% | {seconds:.1f} s |"
            )
    for found in (r for r in results if r["figure"].startswith(CALCULATOR)):
        measured.append(found)
        accuracy = ", ".join(
            f"{op.replace('-', '−').replace('*', '×')} {v:.1f}%" for op, v in found["accuracy_pct"].items()
        )
        name = found["figure"].removeprefix(CALCULATOR)
        flags = f"`--digits 2 --operations +-* {found['flags']}`"
        rows.append(f"| calculator, {name} | {flags} | {accuracy} | {found['train_s']:.1f} s |")
    if not measured:
        return "Not measured yet: `python benchmarks/bench.py --only addition` and `--only calculator`."
    dates = ", ".join(sorted({f["date"] for f in measured}))
    said = (
        "Measured by `python benchmarks/bench.py --only addition` and `--only calculator` (the worked "
        f"solution, each run from scratch; {results_machine(results)}, {dates}). The columns: held-out exact "
        "match, and the seconds of training the run reports, its loss and accuracy estimates included:"
    )
    return said + "\n\n" + "\n".join(rows)


def pretraining_table(results: list[dict]) -> str:
    """Exercise 3: pre-trained against from scratch, seed by seed, at each budget measured."""
    found = [r for r in results if r["figure"].startswith(PRETRAINING)]
    if not found:
        return "Not measured yet: `python exercises/solutions/ex3_pretrain.py --seeds 3`."
    first = found[0]
    seeds = first["seeds"]
    rows = [header("steps", *(f"seed {s}" for s in seeds), "verdict (paired t-test)")]
    for r in found:
        steps = re.search(r"after (\d+) steps", r["figure"])[1]
        said = exercises.paired_test.verdict(r["scratch_val"], r["pretrained_val"])  # from scratch is the baseline
        said = re.sub(r"^(better|worse)", r"pre-trained \1", said)
        rows.append(f"| {steps}, pre-trained | " + " | ".join(f"{v:.4f}" for v in r["pretrained_val"]) + " | |")
        rows.append(f"| {steps}, from scratch | " + " | ".join(f"{v:.4f}" for v in r["scratch_val"]) + f" | {said} |")
    measured = (
        f"Measured by `{first['command']}` ({results_machine(results)}, {first['date']}): pre-training, "
        f"{first['pretraining']}. Then, on tiny Shakespeare, fine-tuning at {first['finetune_lr']:g} against "
        f"training from scratch at {first['scratch_lr']:g}, the same seed and batches, val loss on the whole "
        "validation split:"
    )
    return measured + "\n\n" + "\n".join(rows)


def finetuning_table(results: list[dict]) -> str:
    """Exercise 6: each model's exact match on the held-out pairs, seed by seed, and the paired difference."""
    found = entry(results, FINETUNING)
    if found is None:
        return "Not measured yet: `python exercises/solutions/ex6_finetune.py --seeds 5`."
    accuracy = found["accuracy_pct"]
    rows = [header("model", *(f"seed {s}" for s in found["seeds"]), "mean")]
    for kind, values in accuracy.items():
        rows.append(f"| {kind} | " + " | ".join(f"{v:.1f}%" for v in values) + f" | {sum(values) / len(values):.1f}% |")
    said = exercises.finetuning.difference(accuracy["from scratch"], accuracy["fine-tuned"])
    measured = (
        f"Measured by `{found['command']}` ({found['machine']}, torch {found['torch']}, {found['date']}). The "
        f"pre-trained model: {found['pretrained']}. Then {found['pairs']['fine-tuning']:,} pairs to fine-tune on, "
        f"{found['pairs']['judging']:,} to judge on; {found['steps']} steps of {found['batch_size']} pairs at a "
        f"constant rate, {found['rates']['fine-tuned']:g} fine-tuned and {found['rates']['from scratch']:g} from "
        "scratch. Exact match of the whole line, greedy:"
    )
    return f"{measured}\n\n" + "\n".join(rows) + f"\n\nFine-tuned against from scratch, seed by seed: {said}."


def results_machine(results: list[dict]) -> str:
    top = json.loads(RESULTS.read_text(encoding="utf-8"))
    return f"{top['machine']}, torch {top['torch'].split('+')[0]}"


def comparison_table(results: list[dict], prefix: str, lead: str) -> str:
    """A compare.py measurement, after lead: each file's val loss seed by seed, its mean and its paired verdict."""
    found = entry(results, prefix)
    if found is None:
        return "Not measured yet."
    files = list(found["val"])
    base = found["val"][files[0]]
    seeds = found["seeds"]
    rows = [header("file", *(f"seed {s}" for s in seeds), "mean", "verdict (paired t-test)")]
    for k, file in enumerate(files):
        values = found["val"][file]
        mean, _ = exercises.paired_test.mean_and_spread(values)
        said = "(the baseline)" if k == 0 else exercises.paired_test.verdict(base, values)
        if k and said.startswith("no difference"):
            said += f"; {exercises.paired_test.seeds_to_resolve(base, values)} seeds would resolve 0.01"
        cells = [f"`{file}`", *(f"{v:.4f}" for v in values), f"{mean:.4f}", said]
        rows.append("| " + " | ".join(cells) + " |")
    machine = found.get("machine") or results_machine(results)
    measured = (
        f"{lead} `{found['command']}` (the `cpu` preset, {found['steps']} steps a run; {machine}, {found['date']}; "
        f"{len(files) * len(seeds)} runs). Final val loss, lower is better:"
    )
    return measured + "\n\n" + "\n".join(rows)


def schedule_table(results: list[dict]) -> str:
    return comparison_table(results, SCHEDULE, "Measured in one invocation of")


def stage_10_figure(record: dict) -> str:
    """Stage 10's whole run at the cpu preset, against the five minutes it is sized for."""
    run = record.get("stages", {}).get("10_gpt")
    if run is None:
        return "Stage 10 at its `cpu` preset: no run is recorded yet."
    return (
        f"Stage 10 at its `{run['preset']}` preset (the lecture's recipe, smaller: dropout on, a constant rate), "
        f"the whole run: **{run['wall_time_s']} s** for {run['steps']:,} steps, "
        f"val **{number_or_dash(run['val_loss'], '.4f')}**: "
        f"{'within' if run['wall_time_s'] <= 300 else 'over'} the five minutes it is sized for. "
        f"{measured_by(record)}."
    )


CANDIDATE = "stage10 cpu candidate "  # benchmarks/tune_stage10.py's entries
STEP_SECONDS = 250  # of a five-minute run, what its steps may take: start-up, estimates and the sample need the rest
CURVE_COLUMNS = (1200, 2000, 2800, 3600, 4400)  # steps at which the candidates' val losses are shown


def candidates_table(results: list[dict]) -> str:
    """benchmarks/tune_stage10.py's candidates: ms a step, val at each length, val within STEP_SECONDS."""
    found = [r for r in results if r["figure"].startswith(CANDIDATE) and "curve" in r and "ms_per_step" in r]
    if not found:
        return "No candidates measured yet: `python benchmarks/tune_stage10.py throughput all`, then `curves all`."
    at = [f"val at {s:,}" for s in CURVE_COLUMNS]
    rows = [header("candidate", "what it tries", "ms a step", *at, f"val within {STEP_SECONDS} s of steps")]
    for r in found:
        val = {step: v for step, _, v in r["curve"]}
        fit = int(STEP_SECONDS * 1000 / r["ms_per_step"])  # steps that fit
        cells = [f"`{r['name']}`", r["why"], f"{r['ms_per_step']:.0f}"]
        cells += [f"{val[s]:.4f}" if s in val else "–" for s in CURVE_COLUMNS]
        at_fit = curve_at(r["curve"], fit)
        cells.append("–" if at_fit is None else f"**≈ {at_fit:.4f}** (step {fit:,})")
        rows.append("| " + " | ".join(cells) + " |")
    curve = found[0]["curve_measured"]
    speed = found[0]["ms_per_step_measured"]
    return (
        "Measured by `python benchmarks/tune_stage10.py`: the curves on "
        f"{curve['machine']}, torch {curve['torch'].split('+')[0]}, {curve['date']}, several at once with one "
        f"thread each; the step times with the machine to itself ({speed['date']}). Val loss, lower is better. "
        f"The last column reads each curve at the steps that fit in {STEP_SECONDS} s, on the straight line "
        "between the estimates either side:\n\n" + "\n".join(rows)
    )


def nanogpt_figure(results: list[dict]) -> str:
    """nanoGPT's own CPU recipe, run here by bench.py --only nanogpt: as its README gives it, and at the
    steps that take about as long as stage 10's run."""
    runs = [r for r in results if r["figure"].startswith("nanoGPT cpu recipe, run here")]
    if not runs:
        return "nanoGPT's CPU recipe: not run here yet (`python benchmarks/bench.py --only nanogpt --nanogpt DIR`)."
    rows = [header("nanoGPT's command", "the whole run", "val")]
    rows += [f"| `{r['command']}` | {r['wall_s']} s | {r['val']:.4f} |" for r in runs]
    return (
        "It turns dropout off, warms the rate up and decays it, and trains batches of 12. "
        f"Measured by `python benchmarks/bench.py --only nanogpt` on {results_machine(results)}, {runs[0]['date']}, "
        "from a checkout of nanoGPT; the first row is its README's command:\n\n" + "\n".join(rows)
    )


def curve_at(curve: list[list[float]], step: int) -> float | None:
    """A curve's val loss at step, read on the straight line between the estimates either side of it;
    None past the curve's end."""
    for (s0, _, v0), (s1, _, v1) in itertools.pairwise(curve):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return None


def speed_table(results: list[dict]) -> str:
    """The stages against the lecture's own loop, and stage 10's throughput, as bench.py measured them."""
    rows = [header("figure", "measured", "target")]
    dates = set()
    for stage in ("01_bigram", "09_layer_norm"):
        found = entry(results, f"speed {stage}")
        if found:
            dates.add(found["date"])
            said = (
                f"{found['stage_wall_s']:.1f} s vs {found['lecture_wall_s']:.1f} s: **{found['speedup']:.2f}x**, "
                f"val {found['stage_val']:.4f} vs {found['lecture_val']:.4f}"
            )
            rows.append(
                f"| stage {stage[:2]}, full default run, against the lecture's loop | {said} | 2x, val within 0.03 |"
            )
    found = entry(results, "stage10 video-config GFLOP/s")
    if found:
        dates.add(found["date"])
        said = (
            f"{found['step_s']:.1f} s a step: **{found['achieved_gflops']} GFLOP/s**, "
            f"{found['fraction_of_peak']:.0%} of this machine's fp32 matmul peak as measured that day "
            f"({found['matmul_peak_gflops']} GFLOP/s); {found['achieved_gflops'] / 385:.0%} of the 385 GFLOP/s "
            "the target quotes for this machine"
        )
        rows.append(f"| stage 10 at the lecture's configuration, CPU training throughput | {said} | reported |")
    found = entry(results, "stage10 lecture config (cuda)")
    gpu = 'not measured (see "On a GPU" below)'
    if found:
        dates.add(found["date"])
        gpu = f"{found['wall_s']} s, val {found['val']} ({found.get('machine', 'GPU')})"
    rows.append(
        "| stage 10 at the lecture's configuration on one GPU, compiled, cold start (`--only gpu`) "
        f"| {gpu} | 120 s, val 1.50 on one H100 (nanoGPT's own recipe: 175 s) |"
    )
    dated = ", ".join(sorted(dates))
    return f"Measured by `python benchmarks/bench.py` on {results_machine(results)} ({dated}):\n\n" + "\n".join(rows)


HEAD_SIZES = {
    "cpu": "`cpu` preset (4 heads of 32, block 64, batch 32)",
    "video": "the lecture's (6 heads of 64, block 256, batch 64)",
}


def heads_table(results: list[dict]) -> str:
    """Exercise 1's three forms of attention, a training step each, as bench.py --only heads measured them."""
    rows = [header("configuration", "per head", "batched, by hand", "batched, `scaled_dot_product_attention`")]
    dates = set()
    for preset, label in HEAD_SIZES.items():
        found = entry(results, f"stage10 attention forms, preset {preset}")
        if found is None:
            continue
        dates.add(found["date"])
        rounds, steps = found["rounds_x_steps"].split(" x ")
        cells = [
            f"{label}; {rounds} rounds of {steps} step{'' if steps == '1' else 's'}",
            f"{found['per_head_ms']:,.1f} ms",
            f"{found['batched_ms']:,.1f} ms ({found['batched_speedup']:.2f}x)",
            f"{found['sdpa_ms']:,.1f} ms ({found['sdpa_speedup']:.2f}x)",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if not dates:
        return "Not measured yet: `python benchmarks/bench.py --only heads`."
    return (
        "Measured by `python benchmarks/bench.py --only heads` on "
        f"{results_machine(results)}, {', '.join(sorted(dates))}, as medians of alternating rounds. Each row "
        "times one training step of stage 10 in three forms: the lecture's module per head, one batched module "
        "by hand, and `F.scaled_dot_product_attention`:\n\n" + "\n".join(rows)
    )


KV_CACHE = "exercise 5: key-value cache, preset "


def kv_cache_table(results: list[dict]) -> str:
    """Exercise 5's worked solution against stage 10's generate, as bench.py --only ex5 measured them."""
    rows = [header("configuration", "characters", "stage 10's `generate`", "with the cache", "speed-up")]
    found = [f for f in (entry(results, KV_CACHE + p) for p in ("cpu", "video")) if f]
    if not found:
        return "Not measured yet: `python benchmarks/bench.py --only ex5`."
    for f in found:
        name = "`cpu` preset" if "preset cpu" in f["figure"] else "the lecture's configuration"
        name += f" (block_size {f['block_size']})"
        rows.append(
            f"| {name} | {f['characters']} after a 1-character prompt | {f['stage10_chars_per_s']} | "
            f"{f['cached_chars_per_s']} | {f['speedup']:.2f}x |"
        )
        rows.append(
            f"| {name} | inside the first window | {f['first_window_stage10_chars_per_s']} | "
            f"{f['first_window_cached_chars_per_s']} | {f['first_window_speedup']:.2f}x |"
        )
    dates = ", ".join(sorted({f["date"] for f in found}))
    threads = {f["threads"] for f in found}
    on = "one CPU thread" if threads == {1} else f"{', '.join(map(str, sorted(threads)))} CPU threads"
    same = "both ways wrote the same text" if all(f["same_text"] for f in found) else "the texts DIFFERED: a bug"
    return (
        f"Measured by `python benchmarks/bench.py --only ex5` on {results_machine(results)}, {dates}, on {on}, "
        f"with random weights. Characters a second, medians of {found[0]['rounds']} alternating rounds; {same}:"
        "\n\n" + "\n".join(rows)
    )


def suite_figure(results: list[dict]) -> str:
    """The tests' times against their targets, as benchmarks/bench.py --only tests measured them."""
    said = []
    for figure, command, target in (
        ("test suite", "python -m pytest -q", 45),
        ("one stage's tests (stage 04)", "python -m pytest -q -m stage04", 10),
    ):
        found = entry(results, figure)
        if found is None:
            return "The tests: not timed yet (`python benchmarks/bench.py --only tests`)."
        verdict = "within it" if found["wall_s"] <= target else "over it"
        said.append(
            f"`{command}`: **{found['wall_s']} s** against a target of {target} s, {verdict} (pytest said "
            f"`{found['summary']}`)"
        )
    return (
        f"{'; '.join(said)}. Measured by `python benchmarks/bench.py --only tests` on {results_machine(results)}, "
        f"{found['date']}, with nothing else running."
    )


def stage_01_verdict(record: dict) -> str:
    """Stage 01's closing verdict on a run that reached the recorded val loss."""
    run = record.get("stages", {}).get("01_bigram")
    if run is None:
        return "(no run of stage 01 is recorded yet)"
    references = harness.training.measured(record)
    return fence(harness.training.judge("01_bigram", None, True, run["val_loss"], references), "text")


def blocks(sources: Sources) -> dict[str, str]:
    """Each block's name -> its text."""
    return {
        "stages": stages_table(sources.record, sources=sources.stages),
        "pages": "\n".join(f"{int(s[:2])}. [{title(src)}](stages/{s}.md)" for s, src in sources.stages.items()),
        "stage-01-verdict": stage_01_verdict(sources.record),
        "stage-10": stage_10_figure(sources.record),
        "test-suite": suite_figure(sources.results),
        "speed": speed_table(sources.results),
        "candidates": candidates_table(sources.results),
        "nanogpt": nanogpt_figure(sources.results),
        "heads": heads_table(sources.results),
        "exercise-2": addition_table(sources.results),
        "exercise-3": pretraining_table(sources.results),
        "exercise-6": finetuning_table(sources.results),
        "schedule": schedule_table(sources.results),
        "three-solutions": comparison_table(
            sources.results, THREE, "The other three worked solutions, measured in one invocation of"
        ),
        "kv-cache": kv_cache_table(sources.results),
        "attention-command": fence(attention_command(), "bash"),
    }


def fill_blocks(text: str, made: dict[str, str], path: Path) -> str:
    """text with each block's body made anew; an unknown name or a block without its end is an error."""
    for name in OPENING.findall(text):
        if name not in made:
            raise harness.UserError(
                f"{path} has a block named {name!r}; tools/pages.py makes {', '.join(made)}: fix its name"
            )
    if len(BLOCK.findall(text)) != len(OPENING.findall(text)):
        raise harness.UserError(f"{path} has a block without its '<!-- end of NAME -->' line: add it")
    return BLOCK.sub(lambda m: f"<!-- made by tools/pages.py: {m[1]} -->\n{made[m[1]]}\n<!-- end of {m[1]} -->", text)


def stale_files(sources: Sources) -> dict[Path, str]:
    """The files whose text is not what this would write (missing ones included) -> the text to write."""
    expected = {PAGES / f"{stage}.md": stage_page(stage, sources) for stage in sources.stages}
    made = blocks(sources)
    for path in [common.ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:  # the hand-written files with blocks
        expected[path] = fill_blocks(path.read_text(encoding="utf-8"), made, path)
    return {p: text for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text}


def write_pages(sources: Sources) -> list[Path]:
    """Write every file that is out of date, and draw each recorded stage's curve: what it wrote."""
    written = []
    for path, text in stale_files(sources).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        harness.checkpoints.write_atomically(path, lambda f, text=text: f.write(text.encode("utf-8")))
        written.append(path)
    if plot.have_matplotlib():
        runs = sources.record.get("stages", {})
        for stage, run in runs.items():
            before = tools.stages.previous_stage(stage)
            previous = (before, runs[before]) if before in runs else None
            written.append(draw_curve(stage, run, previous, curve_image(stage)))
    return written


def pages_main(argv: list[str] | None) -> int:
    parser = harness.cli.Parser(prog="python tools/pages.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; name each file that is out of date")
    parser.add_argument("--keys", metavar="NN", help="print the keys of stage NN's hunks, for its walkthrough")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sources = load_sources()
    if args.keys:
        stage = tools.stages.resolve_stage(args.keys)
        previous = tools.stages.previous_stage(stage)
        if previous is None:
            raise harness.UserError(f"{stage} is the first stage: it has no diff")
        for hunk in code_hunks(sources.stages[previous], sources.stages[stage]):
            first = next(line for line in hunk.text.splitlines()[1:] if line.startswith(("+", "-")))
            print(f"## {hunk.key}    {hunk.text.splitlines()[0]}  {first[:70]}")
        return 0
    if args.check:
        stale = stale_files(sources)
        for path in stale:
            print(f"out of date: {path.relative_to(common.ROOT)} (python tools/pages.py writes it)")
        return 1 if stale else 0
    for path in write_pages(sources):
        print(f"wrote {path.relative_to(common.ROOT)}")
    if not plot.have_matplotlib():
        print(f"the curves were not drawn: {plot.MATPLOTLIB_HINT}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(pages_main, argv)


if __name__ == "__main__":
    sys.exit(main())
