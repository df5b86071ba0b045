"""Exercise 3 (pre-train, then fine-tune): the corpus tool's rule against overlap, the checks (each
fails on the untouched starting file and with its own message on the mistakes learners write, and
passes on the worked solution), and the experiment's program, its runs and its refusals."""

import gzip
import io
import json
import tarfile

import pytest

import common
import exercises.check
import harness.checkpoints
import tools.stages
from conftest import SMALL_TEXT, one_line_error
from exercises import pretraining
from exercises.checks import ex3
from tools import corpus

EXERCISE_3 = exercises.check.EXERCISE_DIR / f"{ex3.NAME}.py"
SOLUTION_3 = exercises.check.EXERCISE_DIR / "solutions" / f"{ex3.NAME}.py"
# a pre-training text: lower case, digits and brackets; no capitals, no ':' or '?', unlike SMALL_TEXT
CORPUS_TEXT = "".join(
    f"word {i % 97} (the {w} of it), as in a dictionary; see also {w}s.\n\n"
    for i, w in enumerate(["speech", "citizen", "famine", "resolve", "proceed", "hearing"] * 120)
)
TINY_RUN = ["--n_embd", "16", "--n_head", "2", "--n_layer", "1", "--block_size", "8", "--batch_size", "4"]
TINY_RUN += ["--eval_iters", "1", "--device", "cpu", "--num_tokens", "1"]
TINY_SMALL = dict(pretrain_steps=10, steps=[2], eval_interval=1, flags=TINY_RUN)


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    (folder / "corpus.txt").write_text(CORPUS_TEXT, encoding="utf-8")
    (folder / "small.txt").write_text(SMALL_TEXT, encoding="utf-8")
    return {"corpus": folder / "corpus.txt", "small": folder / "small.txt"}


# -- the corpus: the rule against overlap, and the dictionary's cleaning ---------------------------


def test_normalising_hides_no_quotation_behind_case_breaks_or_punctuation():
    assert corpus.normalise("O Romeo,\nRomeo!  wherefore") == "o romeo romeo wherefore"
    play = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east."
    quoted = 'as, "but soft, what light through\n   yonder window breaks." --Shak.'
    reference = corpus.reference_windows(play)
    assert corpus.shared_runs(quoted, reference)[0] == " but soft what light through y"
    assert corpus.overlapping(["a line of its own, shared with nothing at all", quoted], reference) == [False, True]


def test_a_run_one_character_shorter_than_the_window_is_no_overlap():
    play = "x" + "abcdefghij" * 3 + "y"
    reference = corpus.reference_windows(play)
    assert corpus.overlapping(["abcdefghij" * 3, ("abcdefghij" * 3)[:-1]], reference) == [True, False]
    # a run never spans two paragraphs: each half of the play's run is in another one
    halves = ["abcdefghijabcde", "fghijabcdefghij"]
    assert corpus.overlapping(halves, reference) == [False, False]
    assert corpus.overlapping([], reference) == [] and corpus.shared_runs("", reference) == []


def test_overlap_is_found_across_the_chunks_paragraphs_are_hashed_in():
    reference = corpus.reference_windows("the quality of mercy is not strained, it droppeth")
    paragraphs = [f"paragraph {i} says nothing much" for i in range(50)]
    paragraphs[37] = "The quality of mercy is not strained."
    assert corpus.overlapping(paragraphs, reference, chunk=100).index(True) == 37
    assert sum(corpus.overlapping(paragraphs, reference, chunk=100)) == 1


DICTIONARY = """00-database-short
   A dictionary

Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.
   {Abandoned}; p. pr. & vb. n. {Abandoning}.] [OF. abandoner.]
   1. To cast or drive out; to banish. [Obs.]
      [1913 Webster]

            Being all this time abandoned from your bed. --Shak.
      [1913 Webster]

   Syn: To give up; yield; forego; ca[~n]on; A`ble-mind"ed*ness.

Abase \\A*base"\\, v. t.
   To lower. "Now is the winter of our discontent." --Anon.
   [1913 Webster]

   A formula: x^2 + y^2 = z^2.

Abate \\A*bate"\\, v. t.
   To beat down; to lessen.
"""


def test_the_dictionary_is_cleaned_and_each_rule_removes_its_paragraphs():
    cleaned, removed = corpus.build(DICTIONARY, "Now is the winter of our discontent\nMade glorious summer.")
    entries = cleaned.strip().split("\n\n")  # Abase's two paragraphs are gone: the winter, and the formula
    assert sorted(entries) == [
        "Abandon, v. t.\n1. To cast or drive out; to banish.\nSyn: To give up; yield; forego; canon; Able-mindedness.",
        "Abate, v. t.\nTo beat down; to lessen.",
    ]
    # a character outside (the formula), a shared run (the winter), a quotation (the --Shak. line)
    assert [r.paragraphs for r in removed.values()] == [1, 1, 1]
    assert "00-database" not in cleaned and "[" not in cleaned and "\\" not in cleaned


def test_the_tool_reads_the_debian_package_and_refuses_a_missing_file_in_one_line(tmp_path, capsys):
    dict_dz = gzip.compress(DICTIONARY.encode("utf-8"))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        member = tarfile.TarInfo("./" + corpus.DICT_MEMBER)
        member.size = len(dict_dz)
        tar.addfile(member, io.BytesIO(dict_dz))
    deb = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.xz", data.getvalue())):
        deb += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
    (tmp_path / "dict-gcide.deb").write_bytes(deb)
    (tmp_path / "play.txt").write_text("Now is the winter of our discontent\n", encoding="utf-8")
    out = tmp_path / "gcide.txt"
    argv = [str(tmp_path / "dict-gcide.deb"), "--out", str(out), "--shakespeare", str(tmp_path / "play.txt")]
    assert corpus.main(argv) == 0
    said = capsys.readouterr().out
    assert "(not the gcide.dict.dz measured)" in said and "for a quotation of Shakespeare" in said
    assert out.read_text(encoding="utf-8").count("\n\n") == 1  # two entries
    code = corpus.main([str(tmp_path / "none.deb")])
    one_line_error(code, capsys.readouterr().err, "none.deb: no such file; get it with apt-get download dict-gcide")


def test_a_file_that_is_not_the_dictionary_leaves_a_good_corpus_as_it_was(tmp_path, capsys):
    out = tmp_path / "gcide.txt"
    out.write_text("a good corpus, made before", encoding="utf-8")
    readme = tools.stages.STAGE_DIR.parent / "README.md"  # the mistake seen: any file given by accident
    code = corpus.main([str(readme), "--out", str(out)])
    one_line_error(code, capsys.readouterr().err, "README.md is not the dictionary", "gcide.txt is left as it was")
    assert out.read_text(encoding="utf-8") == "a good corpus, made before"


# -- the checks ---------------------------------------------------------------------------------------


def outcomes(path, only: str | None = None, texts=None, **options) -> dict[str, exercises.check.Outcome]:
    """Exercise 3's outcomes on the file at path, by name, the small experiment tiny; only: that check."""
    options = {"fine_tuning_text": texts["small"], "pretraining_text": texts["corpus"], "min_characters": 0, **options}
    checks = ex3.checks(**options, **TINY_SMALL)
    if only is not None:
        checks = [c for c in checks if c.name == only]
        checks[0].needs = ()
    module = exercises.check.load_learner_file(path)
    return {o.name: o for o in exercises.check.run_checks(checks, module, path)}


def broken(tmp_path, *replacements: tuple[str, str]):
    """The worked solution with a learner's mistake written into it."""
    source = SOLUTION_3.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / f"{ex3.NAME}.py"
    path.write_text(source, encoding="utf-8")
    return path


def test_every_check_fails_on_the_untouched_starting_file(texts):
    results = outcomes(EXERCISE_3, texts=texts, pretraining_text=None)
    assert len(results) == len(ex3.checks())
    assert all(o.status in ("FAILED", "not run") for o in results.values()), results
    assert "carry_over() is not written yet" in results[ex3.SHARED_ROWS].message
    assert "fine_tuning_optimizer() is not written yet" in results[ex3.OPTIMIZER].message
    assert "PRETRAINING_TEXT is not chosen yet" in results[ex3.UNSEEN].message
    assert results[ex3.EXPERIMENT].status == "not run"


def test_every_check_passes_on_the_worked_solution(texts):
    results = outcomes(SOLUTION_3, texts=texts)
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}
    assert "38 characters shared, at other ids" in results[ex3.SHARED_ROWS].message
    assert "no run of 30 characters of small.txt's validation part" in results[ex3.UNSEEN].message
    assert "then 2 steps: val" in results[ex3.EXPERIMENT].message


MAPPING = "    shared = [(i, old_id[ch]) for i, ch in enumerate(vocab) if ch in old_id]\n"
ROWS = "                mine[new] = theirs[old]\n"
COPY_REST = "            else:\n                mine.copy_(theirs)"
FRESH = "    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)\n"
PER_CHARACTER = 'PER_CHARACTER = ("token_embedding_table.weight", "lm_head.weight", "lm_head.bias")'
MISTAKES = {  # mistake: (what the learner wrote instead, the check that fails, what it says)
    "rows copied by id": (
        [(MAPPING, "    shared = [(i, i) for i in range(min(len(vocab), len(pretrained.vocab)))]\n")],
        ex3.SHARED_ROWS,
        "rows copied by id: in token_embedding_table.weight the row of ',' (id 6 here) is the pre-trained row of "
        "id 6, which is '(' there, while ',' is id 8 there",
    ),
    "the head's bias forgotten": (
        [
            (PER_CHARACTER, 'PER_CHARACTER = ("token_embedding_table.weight", "lm_head.weight")'),
            (COPY_REST, "            elif mine.shape == theirs.shape:\n                mine.copy_(theirs)"),
        ],
        ex3.SHARED_ROWS,
        "the entries of lm_head.bias are all still the fresh model's: it has one entry for each character too",
    ),
    "the whole state loaded as it is": (
        [(MAPPING, "    model.load_state_dict(pretrained.model)\n" + MAPPING)],
        ex3.SHARED_ROWS,
        "load_state_dict of the pre-trained weights cannot fit: the two vocabularies differ in size",
    ),
    "new rows left at zero": (
        [(ROWS, "                mine.zero_()\n" + ROWS)],
        ex3.NEW_ROWS,
        "in token_embedding_table.weight the rows of the characters the pre-training text never had ('$', 'A', "
        "'B', 'C' and 23 more) are zero",
    ),
    "new rows taken from id 0": (
        [(MAPPING, "    shared = [(i, old_id.get(ch, 0)) for i, ch in enumerate(vocab)]\n")],
        ex3.NEW_ROWS,
        "the row of '$', a character the pre-training text never had, is a copy of the pre-trained row of id 0",
    ),
    "the other weights not copied": ([(COPY_REST, "")], ex3.OTHERS, "is still the fresh model's: copy every tensor"),
    "the optimizer's old state kept": (
        [
            (
                FRESH,
                "    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)\n"
                "    optimizer.load_state_dict(pretrained.optimizer)\n    return optimizer\n",
            )
        ],
        ex3.OPTIMIZER,
        "the optimizer starts with state (exp_avg, exp_avg_sq, step for 22 parameters): the pre-training's moments",
    ),
    "pre-training's rate": (
        [(FRESH, FRESH.replace("cfg.learning_rate", 'pretrained.config["learning_rate"]'))],
        ex3.OPTIMIZER,
        "the optimizer's rate is 0.003, pre-training's, not the fine-tuning rate cfg.learning_rate (0.0001)",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_fails_its_check_with_its_own_message(mistake, texts, tmp_path):
    replacements, check, message = MISTAKES[mistake]
    results = outcomes(broken(tmp_path, *replacements), only=check, texts=texts)
    assert results[check].status == "FAILED", results[check]
    assert message in results[check].message, results[check].message


def test_a_pre_training_text_with_the_validation_text_in_it_fails(texts, tmp_path):
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(CORPUS_TEXT + "you are all resolved rather to die than to famish\n", encoding="utf-8")
    results = outcomes(SOLUTION_3, only=ex3.UNSEEN, texts=texts, pretraining_text=leaky)
    assert results[ex3.UNSEEN].status == "FAILED"
    message = results[ex3.UNSEEN].message
    assert "leaky.txt holds" in message and "run(s) of 30 characters of small.txt's validation part" in message
    results = outcomes(SOLUTION_3, only=ex3.UNSEEN, texts=texts, min_characters=10**6)
    assert "fewer than pre-training reads (1,000,000" in results[ex3.UNSEEN].message


def test_a_carry_over_that_carries_nothing_fails_the_small_experiment(texts, tmp_path):
    nothing = broken(tmp_path, (MAPPING, "    return\n" + MAPPING))
    results = outcomes(nothing, only=ex3.EXPERIMENT, texts=texts)
    assert results[ex3.EXPERIMENT].status == "FAILED"
    assert "the pre-trained model does no better than a fresh one" in results[ex3.EXPERIMENT].message


# -- the experiment: its runs, and its refusals ----------------------------------------------------------


def experiment(path, argv, capsys) -> tuple[int, str, str]:
    module = exercises.check.load_learner_file(path)
    code = pretraining.pretrain_and_compare(module, argv)
    out, err = capsys.readouterr()
    return code, out, err


def own(texts, folder, *more: str) -> list[str]:
    """The experiment's flags for a tiny run on the test texts into folder."""
    flags = ["--corpus", str(texts["corpus"]), "--data", str(texts["small"]), "--pretrain_steps", "3"]
    return flags + ["--pretrained", str(folder / "pre.pt"), "--steps", "2", "--eval_interval", "1", *more]


@pytest.fixture(scope="module")
def tiny_run(texts, tmp_path_factory):
    """The solution's experiment once, tiny, its checkpoints in a folder of its own: (folder, output)."""
    folder = tmp_path_factory.mktemp("ex3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness.checkpoints, "CHECKPOINT_DIR", folder)
        module = exercises.check.load_learner_file(SOLUTION_3)
        buffer = io.StringIO()
        with pytest.MonkeyPatch.context() as quiet:
            quiet.setattr("sys.stdout", buffer)
            code = pretraining.pretrain_and_compare(module, [*own(texts, folder, "--seeds", "2"), "--", *TINY_RUN])
    assert code == 0, buffer.getvalue()
    return folder, buffer.getvalue()


def test_the_experiment_pre_trains_then_compares_the_two_runs_side_by_side(tiny_run, texts):
    folder, out = tiny_run
    assert "[run 4 of 4] training from scratch for 2 steps at 0.003, seed 1338" in out
    assert "val loss on the whole validation split of the fine-tuning text:" in out
    assert "2 steps, pre-trained against from scratch: " in out
    results = json.loads((folder / "ex3_pretrain_solution_results.json").read_text())
    assert results["seeds"] == [1337, 1338] and len(results["val_loss"]["2"]["pre-trained"]) == 2
    pre = harness.checkpoints.load(folder / "pre.pt", "10_gpt")
    assert pre.vocab == "".join(sorted(set(CORPUS_TEXT))) and pre.step == 3
    tuned = harness.checkpoints.load(folder / "ex3_pretrain_solution_finetuned_2_seed1337.pt", "10_gpt")
    scratch = harness.checkpoints.load(folder / "ex3_scratch_2_seed1337.pt", "10_gpt")
    assert tuned.vocab == scratch.vocab == "".join(sorted(set(SMALL_TEXT)))  # the fine-tuning text's own ids
    assert tuned.init_from["path"] == str((folder / "pre.pt").resolve()) and scratch.init_from is None
    assert tuned.config["learning_rate"] == 3e-4 and scratch.config["learning_rate"] == 3e-3
    # the same seed: the same batches, so the same estimate's batches too; the weights differ
    assert tuned.history[0]["val_loss"] != scratch.history[0]["val_loss"]
    assert (folder / "ex3_pretrain_solution.png").exists()


def test_the_same_command_with_resume_reuses_every_run(tiny_run, texts, capsys, monkeypatch):
    folder, _ = tiny_run
    monkeypatch.setattr(harness.checkpoints, "CHECKPOINT_DIR", folder)
    before = (folder / "ex3_scratch_2_seed1337.pt").read_bytes()
    # "the same command plus --resume", as a stopped run says: after the flags for stage 10
    code, out, err = experiment(SOLUTION_3, [*own(texts, folder), "--", *TINY_RUN, "--resume"], capsys)
    assert code == 0, err
    assert "pre-trained model: " in out and "reused" in out and "already at step 2" in out
    assert (folder / "ex3_scratch_2_seed1337.pt").read_bytes() == before


@pytest.mark.parametrize(
    "flags, stage_flags, said",
    [
        (["--steps", "0"], [], "argument --steps: '0' must be greater than 0"),
        ([], ["--max_iters", "5"], "--max_iters after -- is set by the experiment itself"),
        (["--pretrained", "STAGE_10"], [], "is stage 10's own checkpoint; the exercise pre-trains into one of its own"),
        ([], ["--n_embd", "24"], "was pre-trained at other sizes (n_embd 16 there, 24 asked)"),
        ([], ["--n_emb", "24"], "unknown argument(s): --n_emb (did you mean --n_embd?)"),
    ],
)
def test_bad_flags_are_one_line(flags, stage_flags, said, tiny_run, texts, capsys):
    folder, _ = tiny_run
    flags = [str(harness.checkpoints.default_path("10_gpt")) if f == "STAGE_10" else f for f in flags]
    code, _, err = experiment(SOLUTION_3, [*own(texts, folder, *flags), "--", *TINY_RUN, *stage_flags], capsys)
    one_line_error(code, err, said)


def test_a_corpus_with_the_validation_text_is_refused_before_training(texts, tmp_path, capsys):
    leaky = tmp_path / "leaky.txt"
    leaky.write_text(CORPUS_TEXT + SMALL_TEXT[-200:], encoding="utf-8")
    argv = [*own(texts, tmp_path, "--corpus", str(leaky)), "--", *TINY_RUN]
    code, out, err = experiment(SOLUTION_3, argv, capsys)
    one_line_error(code, err, "leaky.txt holds", "of small.txt's validation part")
    assert "step 0" not in out and not (tmp_path / "pre.pt").exists()


def test_the_starting_file_asks_for_its_text_then_for_its_parts(tiny_run, texts, capsys):
    code, _, err = experiment(EXERCISE_3, ["--", *TINY_RUN], capsys)
    one_line_error(code, err, "no text to pre-train on: set PRETRAINING_TEXT in", "or pass --corpus PATH")
    folder, _ = tiny_run
    before = (folder / "pre.pt").read_bytes()
    code, _, err = experiment(EXERCISE_3, [*own(texts, folder), "--", *TINY_RUN], capsys)
    one_line_error(
        code, err, "carry_over() is not written yet: write it, then check it with python exercises/check.py 3"
    )
    assert (folder / "pre.pt").read_bytes() == before  # the pre-trained model, reused as it was


def test_a_copy_kept_elsewhere_finds_the_corpus_in_the_project(tmp_path):
    """check.py 3 --file /some/dir/copy.py: the corpus is the project's data/gcide.txt, not /some/data/."""
    copy = tmp_path / "elsewhere" / "copy.py"
    copy.parent.mkdir()
    copy.write_text((exercises.check.EXERCISE_DIR / "solutions" / "ex3_pretrain.py").read_text(encoding="utf-8"))
    module = exercises.check.load_learner_file(copy)
    assert pretraining.chosen_text(module.PRETRAINING_TEXT) == common.ROOT / "data" / "gcide.txt"


def test_new_rows_as_the_mean_of_the_pre_trained_rows_are_a_right_answer_said_so(texts, tmp_path):
    mean_first = "                mine[:] = theirs.mean(dim=0)  # a new character starts as the average one\n"
    path = broken(tmp_path, (ROWS, mean_first + ROWS))
    result = outcomes(path, only=ex3.NEW_ROWS, texts=texts)[ex3.NEW_ROWS]
    assert result.status == "passed" and result.message.endswith(": the mean of the pre-trained rows"), result
