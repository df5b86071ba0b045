"""Exercise 6 (fine-tune to a task): the checks fail on the untouched starting file, pass on the
worked solution and on right answers written another way, and fail with their own message on the
mistakes learners write; the task's pairs; the program's comparison, --ask and its refusals."""

import dataclasses
import io
import re
import shutil

import pytest
import torch

import exercises.check
import harness.checkpoints
import tools.stages
from conftest import one_line_error
from exercises import finetuning
from exercises.checks import ex6

EXERCISE_6 = exercises.check.EXERCISE_DIR / f"{ex6.NAME}.py"
SOLUTION_6 = exercises.check.EXERCISE_DIR / "solutions" / f"{ex6.NAME}.py"


def outcomes(path) -> dict[str, exercises.check.Outcome]:
    module = exercises.check.load_learner_file(path)
    return {o.name: o for o in exercises.check.run_checks(ex6.checks(), module, path)}


def broken(tmp_path, *replacements: tuple[str, str]):
    """The worked solution with a learner's change written into it."""
    source = SOLUTION_6.read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / f"{ex6.NAME}.py"
    path.write_text(source, encoding="utf-8")
    return path


def test_every_check_fails_on_the_untouched_starting_file():
    results = outcomes(EXERCISE_6)
    assert len(results) == len(ex6.checks())
    assert all(o.status in ("FAILED", "not run") for o in results.values()), results
    assert "vocabulary() is not written yet" in results[ex6.VOCABULARY].message


def test_every_check_passes_on_the_worked_solution():
    results = outcomes(SOLUTION_6)
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}
    assert "'Good mlrrow.[<answer>]Good morrow.[<end>]'" in results[ex6.TEMPLATE].message


MARKS = 'ANSWER, END = "<answer>", "<end>"'
PADDING = "    x = torch.zeros(len(pairs), T, dtype=torch.long)"
TARGETS = "        y[b, start : len(ids) - 1] = seq[start + 1 :]"
INPUTS = "        x[b, : len(ids) - 1] = seq[:-1]\n"
ARGMAX = "        token = int(logits[0, -1].argmax())\n"
RIGHT = {  # a right answer written another way: the solution with these changes
    "one mark for both, and the padding that mark's id": [
        (MARKS, 'ANSWER = END = "<sep>"'),
        ("    return [*chars, ANSWER, END]", "    return [*chars, ANSWER]"),
        (PADDING, "    x = torch.full((len(pairs), T), vocab.index(END), dtype=torch.long)"),
    ],
    "a mark before the prompt too, and the mask made of the whole row": [
        (MARKS, 'ASK, ANSWER, END = "<fix>", "<answer>", "<end>"'),
        ("    return [*chars, ANSWER, END]", "    return [*chars, ASK, ANSWER, END]"),
        ("    before = [ids[ch] for ch in prompt]", "    before = [ids[ASK]] + [ids[ch] for ch in prompt]"),
        (
            TARGETS,
            "        y[b, : len(ids) - 1] = seq[1:]\n"
            "        y[b] = torch.where(torch.arange(T) >= start, y[b], torch.full_like(y[b], IGNORE))",
        ),
    ],
}


@pytest.mark.parametrize("variant", list(RIGHT))
def test_a_right_answer_written_another_way_passes(variant, tmp_path):
    results = outcomes(broken(tmp_path, *RIGHT[variant]))
    assert all(o.status == "passed" for o in results.values()), {n: o.message for n, o in results.items()}


MISTAKES = {  # mistake: (what the learner wrote instead, the check that fails, what it says)
    "the prompt left in the loss": (
        [(TARGETS, "        y[b, : len(ids) - 1] = seq[1:]")],
        ex6.TARGETS,
        "the prompt left in the loss: row 0 counts 25 target(s) before the answer",
    ),
    "the end mark not learned": (
        [(TARGETS, "        y[b, start : len(ids) - 2] = seq[start + 1 : -1]")],
        ex6.TARGETS,
        "the end mark not learned: row 0's target after the answer's last character is IGNORE",
    ),
    "the answer shifted by one": (
        [(TARGETS, "        y[b, start + 1 : len(ids) - 1] = seq[start + 1 : -1]")],
        ex6.TARGETS,
        "the answer shifted by 1: in row 0 the target at position t is the id at t+0, not at t+1",
    ),
    "padding counted": (
        [
            (PADDING, "    x = torch.zeros(len(pairs), T + 1, dtype=torch.long)"),
            (INPUTS, "        x[b, : len(ids)] = seq\n"),
            (TARGETS, "        y[b, start:] = x[b, start + 1 :]"),
            ("    return x, y\n", "    return x[:, :-1], y\n"),
        ],
        ex6.TARGETS,
        "padding counted: row 1 counts 26 target(s) after its end mark",
    ),
    "x padded with IGNORE": (
        [(PADDING, "    x = torch.full((len(pairs), T), IGNORE, dtype=torch.long)")],
        ex6.TARGETS,
        "x holds the id -100, which no token has: pad x with an id of the vocabulary",
    ),
    "a '$' of the text borrowed as the mark": (
        [(MARKS, 'ANSWER, END = "$", "<end>"'), ("    return [*chars, ANSWER, END]", "    return [*chars, END]")],
        ex6.TEMPLATE,
        "the template borrows '$' from the text as a mark",
    ),
    "no mark of its own": (
        [(MARKS, 'ANSWER, END = "$", "\\n"'), ("    return [*chars, ANSWER, END]", "    return list(chars)")],
        ex6.VOCABULARY,
        "vocabulary() is the characters alone: add the template's marks as tokens of their own",
    ),
    "a sampled answer": (
        [(ARGMAX, "        token = int(torch.multinomial(logits[0, -1].softmax(-1), 1))\n")],
        ex6.ANSWER,
        "the answer is sampled; take the most likely token",
    ),
    "no stop at the end mark": (
        [("        if token == end:\n            break\n", "")],
        ex6.ANSWER,
        "the answer goes on past the end mark",
    ),
    "past block_size": (
        [("    while idx.shape[1] <= model.block_size:", "    while idx.shape[1] <= 2 * model.block_size:")],
        ex6.ANSWER,
        "answer() gave the model 65 ids, more than block_size (64)",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_fails_its_check_with_its_own_message(mistake, tmp_path):
    replacements, check, message = MISTAKES[mistake]
    results = outcomes(broken(tmp_path, *replacements))
    assert results[check].status == "FAILED", results[check]
    assert message in results[check].message, results[check].message
    failed = [name for name, o in results.items() if o.status == "FAILED"]
    assert failed == [check], failed  # one mistake, one finding


# -- the task and the program ------------------------------------------------------------------------------

NAMES = ["Romeo", "Juliet", "Tybalt", "Mercutio", "Benvolio", "Capulet"]
# a play of lines 15 to 28 characters long, each once, and speakers' names that the task leaves out
PLAY = "".join(f"{NAMES[i % 6].upper()}:\nGood {NAMES[(i * 5) % 6]} speaks {i:03d}\n\n" for i in range(200))


def test_the_pairs_hold_one_typo_and_judge_on_lines_training_never_has():
    task = finetuning.make_task(PLAY)
    assert len(task.train) == 180 and len(task.judge) == 20
    assert not {line for _, line in task.judge} & {line for _, line in task.train}
    cut = int(0.9 * len(PLAY))
    assert all(line in PLAY[cut:] and line not in PLAY[:cut] for _, line in task.judge)
    for prompt, line in task.train + task.judge:
        assert len(prompt) == len(line) and prompt != line
        differ = [i for i in range(len(line)) if prompt[i] != line[i]]
        swapped = len(differ) == 2 and differ[1] == differ[0] + 1 and prompt[differ[0]] == line[differ[1]]
        assert len(differ) == 1 or swapped, (prompt, line)
        words = [m.span() for m in re.finditer("[A-Za-z]{4,}", line)]
        assert any(a <= differ[0] and differ[-1] < b for a, b in words), (prompt, line)
        assert prompt[differ[0]].isalpha() and set(prompt) <= set(PLAY)  # no letter the text lacks


def test_the_task_takes_lines_of_15_to_28_characters_with_a_long_word_and_no_speakers():
    kept = "O Romeo, Romeo, my Romeo"
    text = f"ROMEO AND JULIET, ACT ONE:\nGo to, go to it, go on\n{kept}\nA line.\n{kept}\n{'a' * 29}\n"
    assert finetuning.task_lines(text) == [kept]


TINY = dict(batch_size=4, block_size=64, n_embd=16, n_head=2, n_layer=1, dropout=0.0)


def pretrained_on(text: str, path) -> None:
    """A tiny stage 10 as if pre-trained from scratch on text: its weights as initialised."""
    stage = tools.stages.load_stage("10_gpt")
    cfg = stage.Config(**TINY)
    vocab = "".join(sorted(set(text)))
    model = stage.LanguageModel(len(vocab), cfg)
    saved = harness.checkpoints.Checkpoint(
        "10_gpt", dataclasses.asdict(cfg), vocab, 1, model.state_dict(), {}, [], 0.0, {}
    )
    harness.checkpoints.write_file(path, saved.to_file())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The solution's comparison, tiny, on PLAY, from a tiny pre-trained model: (folder, output)."""
    folder = tmp_path_factory.mktemp("ex6")
    (folder / "play.txt").write_text(PLAY, encoding="utf-8")
    pretrained_on(PLAY, folder / "10_gpt.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(harness.checkpoints, "CHECKPOINT_DIR", folder)
        module = exercises.check.load_learner_file(SOLUTION_6)
        argv = ["--data", str(folder / "play.txt"), "--steps", "2", "--batch_size", "4", "--judged", "2"]
        code, out = run(module, argv)
    assert code == 0, out
    return folder, out


def run(module, argv, capsys=None) -> tuple[int, str]:
    if capsys is not None:
        code = finetuning.finetune_and_compare(module, argv)
        out, err = capsys.readouterr()
        return code, out + err
    with pytest.MonkeyPatch.context() as quiet:
        buffer = io.StringIO()
        quiet.setattr("sys.stdout", buffer)
        code = finetuning.finetune_and_compare(module, argv)
    return code, buffer.getvalue()


def test_the_comparison_reports_the_three_models_seed_by_seed(tiny_run):
    folder, out = tiny_run
    assert "180 pairs from play.txt's training split to fine-tune on, 2 from its validation split" in out
    assert "seed 1337: not fine-tuned: " in out and "fine-tuned against from scratch: " in out
    assert (folder / "ex6_finetune_solution.pt").exists() and (folder / "ex6_finetune_solution_results.json").exists()


def test_ask_answers_with_the_fine_tuned_model_and_refuses_bad_lines_in_one_line(
    tiny_run, capsys, monkeypatch, tmp_path
):
    folder, _ = tiny_run
    monkeypatch.setattr(harness.checkpoints, "CHECKPOINT_DIR", folder)
    module = exercises.check.load_learner_file(SOLUTION_6)
    code, out = run(module, ["--ask", "Good Romoe speaks 003"], capsys)
    assert code == 0 and out, out  # what an untrained model writes: any characters, no error
    for line, said in [
        ("Good Romeo ~ speaks 003", "--ask has character(s) the model's text never uses: '~'"),
        ("Good Romeo speaks " * 3, "--ask has 54 characters; the answer must fit beside it in block_size (64)"),
    ]:
        code, err = run(module, ["--ask", line], capsys)
        one_line_error(code, err, said)
    renamed = exercises.check.load_learner_file(broken(tmp_path, (MARKS, 'ANSWER, END = "<fix>", "<stop>"')))
    shutil.copy(folder / "ex6_finetune_solution.pt", folder / "ex6_finetune.pt")  # the solution's, other marks
    code, err = run(renamed, ["--ask", "Good Romoe speaks 003"], capsys)
    one_line_error(code, err, "was fine-tuned with other tokens than vocabulary() gives now", "fine-tune again")
    monkeypatch.setattr(harness.checkpoints, "CHECKPOINT_DIR", folder / "none")
    code, err = run(module, ["--ask", "Good Romoe speaks 003"], capsys)
    one_line_error(code, err, "no fine-tuned model at", "fine-tune first with python exercises/solutions/")


def test_a_pre_trained_model_of_another_text_is_refused_and_the_starting_file_asks_for_its_parts(
    tiny_run, small_text_file, capsys
):
    folder, _ = tiny_run
    module = exercises.check.load_learner_file(SOLUTION_6)
    pretrained = ["--pretrained", str(folder / "10_gpt.pt")]
    code, err = run(module, ["--data", str(small_text_file), *pretrained], capsys)
    one_line_error(
        code, err, "was trained on another text; the comparison needs stage 10 pre-trained from scratch on the text"
    )
    code, err = run(module, ["--pretrained", str(folder / "none.pt")], capsys)
    one_line_error(code, err, "no pre-trained model at", "python stages/10_gpt.py --preset cpu")
    starting = exercises.check.load_learner_file(EXERCISE_6)
    code, err = run(starting, ["--data", str(folder / "play.txt"), *pretrained], capsys)
    one_line_error(
        code, err, "vocabulary() is not written yet: write it, then check it with python exercises/check.py 6"
    )


def test_the_grown_model_keeps_every_pre_trained_weight_and_gives_each_mark_a_fresh_row(tmp_path):
    pretrained_on(PLAY, tmp_path / "pre.pt")
    pre = harness.checkpoints.load(tmp_path / "pre.pt", "10_gpt")
    vocab = ["<answer>", *reversed(pre.vocab), "<end>"]  # the characters at other ids than the pre-trained ones
    model = finetuning.grown(pre, vocab, finetuning.model_config(pre))
    for name, tensor in model.state_dict().items():
        if name in finetuning.PER_TOKEN:
            for i, token in enumerate(vocab):
                if token in pre.vocab:
                    assert torch.equal(tensor[i], pre.model[name][pre.vocab.index(token)]), (name, token)
            assert not torch.equal(tensor[0], tensor[-1])  # two marks, two rows of their own
        else:
            assert torch.equal(tensor, pre.model[name]), name
