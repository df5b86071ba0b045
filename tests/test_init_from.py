"""--init_from (fine-tuning from another checkpoint's weights) and --vocab_from (a vocabulary that
covers a text to fine-tune on later): what they start from, what they record, and every refusal."""

import shutil

import pytest
import torch

import harness
import harness.checkpoints
import harness.cli
from conftest import SMALL_TEXT, STAGE_IDS, load_stage, one_line_error, tiny_flags

BIGRAM, POSITION, GPT = STAGE_IDS[0], STAGE_IDS[1], STAGE_IDS[-1]
SUBSET_TEXT = "All:\nSpeak, speak.\n\n" * 200  # only characters SMALL_TEXT has
FOREIGN_TEXT = "Zoë: speak, all.\n" * 300  # 'Z' and 'ë' are not in SMALL_TEXT


def flags(module, data, ckpt, *more: str, max_iters: int = 2) -> list[str]:
    """A run of a few steps, each estimated (one batch a split), on data into ckpt."""
    tiny = tiny_flags(module, max_iters=max_iters, eval_interval=1, eval_iters=1, n_layer=1)
    return tiny + ["--data", str(data), "--checkpoint", str(ckpt), *more]


def contents(paths) -> dict:
    """Each file's bytes, by path: to tell that a refused run left them as they were."""
    return {p: p.read_bytes() for p in paths}


@pytest.fixture
def bigram():
    return load_stage(BIGRAM)


@pytest.fixture
def texts(tmp_path):
    """The texts a run can fine-tune on: one within SMALL_TEXT's characters, one with others."""
    subset, foreign = tmp_path / "subset.txt", tmp_path / "foreign.txt"
    subset.write_text(SUBSET_TEXT, encoding="utf-8")
    foreign.write_text(FOREIGN_TEXT, encoding="utf-8")
    return {"subset": subset, "foreign": foreign}


@pytest.fixture(scope="module")
def pretrained(small_text_file, tmp_path_factory):
    """A bigram checkpoint trained for 2 steps on the small text: the run to start from, trained once
    for this file's tests (each checks that it is left as it was)."""
    bigram = load_stage(BIGRAM)
    ckpt = tmp_path_factory.mktemp("pretrained") / "pre.pt"
    assert harness.run_main(bigram.main, flags(bigram, small_text_file, ckpt)) == 0
    return ckpt


# -- starting from another checkpoint's weights ----------------------------------------------------


def test_init_from_takes_the_weights_alone_and_resume_goes_on(bigram, pretrained, texts, tmp_path, run_cli):
    source_bytes = pretrained.read_bytes()
    source = torch.load(pretrained, weights_only=True)
    ckpt = tmp_path / "ft.pt"
    # a rate of 0 leaves the weights as loaded, so the checkpoint after one step holds what the run started from
    command = flags(bigram, texts["subset"], ckpt, "--init_from", str(pretrained), "--learning_rate", "0")
    code, out, err = run_cli(bigram, command + ["--max_iters", "1"])
    assert code == 0, err
    val = source["history"][-1]["val_loss"]
    assert f"initialised from {pretrained} (step 2, val loss {val:.4f}): fresh optimizer, step 0" in out
    assert "resumed" not in out
    saved = torch.load(ckpt, weights_only=True)
    assert saved["model"].keys() == source["model"].keys()
    assert all(torch.equal(saved["model"][k], source["model"][k]) for k in source["model"])
    assert saved["step"] == 1 and [r["step"] for r in saved["history"]] == [0]  # from step 0, a history of its own
    steps = [s["step"].item() for s in saved["optimizer"]["state"].values()]
    assert steps and set(steps) == {1.0}  # AdamW's moments from this run's one step, none of the source's two
    assert saved["vocab"] == source["vocab"]  # the subset text's ids are the checkpoint's
    assert saved["init_from"] == {"path": str(pretrained.resolve()), "step": 2, "val_loss": val}
    assert pretrained.read_bytes() == source_bytes

    # the same command plus --resume (as Ctrl-C says) continues the fine-tuning run, not a new one
    code, out, err = run_cli(bigram, command + ["--max_iters", "3", "--resume"])
    assert code == 0, err
    assert f"resumed from {ckpt} at step 1" in out and "initialised from" not in out
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["step"] == 3 and [r["step"] for r in resumed["history"]] == [0, 1, 2]
    assert resumed["init_from"] == saved["init_from"]
    assert pretrained.read_bytes() == source_bytes


def test_stage_10_with_its_preset_starts_from_its_weights_and_names_the_sizes_to_add(
    small_text_file, tmp_path, run_cli
):
    module = load_stage(GPT)
    pre, ft = tmp_path / "pre.pt", tmp_path / "ft.pt"
    assert run_cli(module, flags(module, small_text_file, pre, max_iters=1))[0] == 0
    code, out, err = run_cli(module, flags(module, small_text_file, ft, "--init_from", str(pre), max_iters=1))
    assert code == 0, err
    assert "preset: cpu" in out and f"initialised from {pre} (step 1, val loss" in out
    # the preset's own sizes are not the checkpoint's: the line says which flags give them
    command = ["--init_from", str(pre), "--checkpoint", str(ft), "--data", str(small_text_file), "--device", "cpu"]
    code, _, err = run_cli(module, command)
    one_line_error(
        code,
        err,
        "holds a model of another size (block_size 8 there, 64 here, n_embd 16 there, 128 here",
        "not from --init_from: add --block_size 8 --n_embd 16 --n_head 2 --n_layer 1",
    )
    assert "learning_rate" not in err  # the settings that change no shape are not asked for


def test_a_model_of_another_size_is_one_line(bigram, pretrained, small_text_file, tmp_path, run_cli):
    module = load_stage(POSITION)
    pre = tmp_path / "pos.pt"
    assert run_cli(module, flags(module, small_text_file, pre, max_iters=1))[0] == 0
    command = flags(module, small_text_file, tmp_path / "ft.pt", "--init_from", str(pre), "--n_embd", "24")
    code, _, err = run_cli(module, command)
    one_line_error(code, err, f"{pre} holds a model of another size (n_embd 16 there, 24 here", "add --n_embd 16")


@pytest.mark.parametrize(
    "case, message",
    [
        ("another stage", f"saved by stage {BIGRAM}, not {POSITION}; a stage starts only from its own weights"),
        ("own checkpoint", "is this run's own --checkpoint, which training would overwrite; pass another --checkpoint"),
        ("own checkpoint, spelled otherwise", "is this run's own --checkpoint"),
        ("the backup", "is where this run copies the checkpoint it replaces"),
        ("characters it lacks", "foreign.txt has 2 characters ('Z', 'ë') that "),
        ("with --sample", "--init_from starts training from a checkpoint, --sample only samples one: drop one of them"),
        ("resume of nothing", "to resume; drop --resume to start a run from"),
    ],
)
def test_init_from_refusals_are_one_line(case, message, bigram, pretrained, texts, small_text_file, tmp_path, run_cli):
    module, data, ckpt, init_from, more = bigram, small_text_file, tmp_path / "ft.pt", pretrained, []
    if case == "another stage":
        module = load_stage(POSITION)
    elif case == "own checkpoint":
        ckpt = pretrained
    elif case == "own checkpoint, spelled otherwise":
        ckpt = pretrained.parent / "elsewhere" / ".." / pretrained.name
    elif case == "the backup":  # the run over ft.pt would copy ft.pt onto the very file it starts from
        ckpt.write_bytes(pretrained.read_bytes())
        init_from = harness.checkpoints.previous_path(ckpt)
        shutil.copy2(pretrained, init_from)
    elif case == "characters it lacks":
        data = texts["foreign"]
    elif case == "with --sample":
        more = ["--sample"]
    elif case == "resume of nothing":
        more = ["--resume"]
    before = contents([pretrained, *tmp_path.glob("*.pt")])
    code, out, err = run_cli(module, flags(module, data, ckpt, "--init_from", str(init_from), *more))
    one_line_error(code, err, message)
    assert "step 0" not in out  # refused before any training
    assert contents([pretrained, *tmp_path.glob("*.pt")]) == before  # every checkpoint as it was, none new


def test_text_with_characters_the_checkpoint_lacks_says_what_to_do(bigram, pretrained, texts, tmp_path, run_cli):
    code, _, err = run_cli(bigram, flags(bigram, texts["foreign"], tmp_path / "ft.pt", "--init_from", str(pretrained)))
    lacks = f"foreign.txt has 2 characters ('Z', 'ë') that {pretrained} has no ids for"
    one_line_error(code, err, lacks, f"pre-train with --vocab_from {texts['foreign']}", "map the model's rows")


# -- a vocabulary for a text to come ------------------------------------------------------------------


def test_vocab_from_builds_the_union_and_the_fine_tuning_fits_it(bigram, small_text_file, texts, tmp_path, run_cli):
    pre, ft = tmp_path / "pre.pt", tmp_path / "ft.pt"
    # --prompt is checked against the vocabulary, which now has 'Z' and 'ë'
    code, out, err = run_cli(bigram, flags(bigram, small_text_file, pre, "--vocab_from", str(texts["foreign"])))
    assert code == 0, err
    union = "".join(sorted(set(SMALL_TEXT) | set(FOREIGN_TEXT)))
    assert torch.load(pre, weights_only=True)["vocab"] == union
    assert f"vocabulary {len(union)}," in out

    code, out, err = run_cli(bigram, flags(bigram, texts["foreign"], ft, "--init_from", str(pre), "--prompt", "Zoë"))
    assert code == 0, err
    assert torch.load(ft, weights_only=True)["vocab"] == union

    # resuming the pre-training without typing --vocab_from again: the checkpoint's vocabulary holds the text
    resume = ["--resume", "--checkpoint", str(pre), "--data", str(small_text_file), "--max_iters", "3"]
    code, out, err = run_cli(bigram, resume)
    assert code == 0, err
    assert f"resumed from {pre} at step 2" in out
    assert torch.load(pre, weights_only=True)["vocab"] == union


def test_vocab_from_a_file_that_is_not_there_is_one_line(bigram, small_text_file, tmp_path, run_cli):
    missing = tmp_path / "nope.txt"
    code, out, err = run_cli(bigram, flags(bigram, small_text_file, tmp_path / "c.pt", "--vocab_from", str(missing)))
    one_line_error(code, err, f"--vocab_from {missing}: no such file")
    assert "step 0" not in out


def test_vocab_from_with_a_checkpoint_must_fit_its_vocabulary(bigram, pretrained, texts, tmp_path, run_cli):
    command = flags(bigram, texts["subset"], tmp_path / "ft.pt", "--init_from", str(pretrained))
    code, _, err = run_cli(bigram, command + ["--vocab_from", str(texts["foreign"])])
    one_line_error(code, err, "foreign.txt has 2 characters ('Z', 'ë')", "a run from a checkpoint keeps its vocabulary")


def test_help_lists_both_among_the_running_flags():
    text = harness.cli.build_parser(BIGRAM, "A stage.", load_stage(BIGRAM).Config, None).format_help()
    running = text.split("\nrunning:", 1)[1].split("\nsampling:", 1)[0]
    assert "--init_from PATH" in running and "--vocab_from FILE [FILE ...]" in running


# -- the record in the checkpoint -----------------------------------------------------------------------


def test_a_checkpoint_without_the_record_loads_and_is_written_back_without_it(tmp_path):
    path = tmp_path / "old.pt"
    generator = torch.Generator().get_state()
    old = {
        "format": harness.checkpoints.CHECKPOINT_FORMAT,
        "stage": BIGRAM,
        "config": {"batch_size": 4},
        "vocab": "ab",
        "step": 3,
        "model": {"w": torch.zeros(2, 2)},
        "optimizer": {"state": {}, "param_groups": []},
        "history": [],
        "elapsed": 0.5,
        "rng": {"batches": generator, "eval": generator},
    }
    torch.save(old, path)
    ckpt = harness.checkpoints.load(path, BIGRAM)
    assert ckpt.init_from is None
    assert sorted(ckpt.to_file()) == sorted(old)  # a run from scratch writes the file it always wrote
    ckpt.init_from = {"path": "/x/pre.pt", "step": 2, "val_loss": None}
    harness.checkpoints.write_file(path, ckpt.to_file())
    assert harness.checkpoints.load(path, BIGRAM).init_from == ckpt.init_from
