"""tools/attention.py: what it shows is what the model computed, and every failure is one line."""

import dataclasses
import re
import sys

import pytest
import torch
from torch.nn import functional as F  # noqa: N812 (the lecture's spelling)

import common
import harness.checkpoints
from conftest import SMALL_TEXT, STAGE_IDS, load_stage, one_line_error, tiny_config, tiny_flags
from tools import attention

PNG_MAGIC = b"\x89PNG"
ATTENTION_STAGES = STAGE_IDS[2:]  # 03_causal_average to 10_gpt
TOKENIZER = common.CharTokenizer.from_text(SMALL_TEXT)
BLOCK = tiny_config(load_stage("10_gpt")).block_size  # 8


def save_tiny_checkpoint(stage: str, path, seed: int = 0, **overrides):
    """A checkpoint of the stage's model at TINY sizes, with random weights, in the Trainer's format."""
    module = load_stage(stage)
    config = tiny_config(module, **overrides)
    torch.manual_seed(seed)
    model = module.LanguageModel(TOKENIZER.vocab_size, config)
    ckpt = harness.checkpoints.Checkpoint(
        stage=stage,
        config=dataclasses.asdict(config),
        vocab=TOKENIZER.chars,
        step=0,
        model=model.state_dict(),
        optimizer={},  # the tool never reads what only --resume needs
        history=[],
        elapsed=0.0,
        rng={},
    )
    harness.checkpoints.write_file(path, ckpt.to_file())
    return path


def run_tool(capsys, *argv) -> tuple[int, str, str]:
    code = attention.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def printed_odds(out: str) -> dict[str, float]:
    """The odds the tool listed: {"e": 0.109, "␣": 0.074, ...}."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^\s+(\S)\s+([01]\.\d{3})\s", out, re.MULTILINE)}


# -- the capture: the weights shown are the weights used ---------------------------------------------


@pytest.mark.parametrize("stage", ATTENTION_STAGES)
def test_the_captured_weights_are_the_ones_the_model_used(stage):
    module = load_stage(stage)
    config = tiny_config(module, dropout=0.2)  # stage 10: dropout on, so the capture must run in eval mode
    torch.manual_seed(0)
    model = module.LanguageModel(TOKENIZER.vocab_size, config)
    for m in model.modules():
        if hasattr(m, "query"):  # sharper heads: a wrong weight could not pass for a near-uniform one
            m.query.weight.data *= 8
    length = config.block_size  # T
    idx = torch.randint(TOKENIZER.vocab_size, (1, length))  # (1, T)

    logits, layers = attention.capture_attention(model, idx)

    assert model.training  # left in the mode it was in
    torch.testing.assert_close(logits, model.eval()(idx)[0], rtol=0, atol=0)  # the hooks change nothing
    n_layer, n_head = getattr(config, "n_layer", 1), getattr(config, "n_head", 1)
    assert [len(layer) for layer in layers] == [n_head] * n_layer  # rows layers, columns heads
    for layer in layers:
        for head in layer:
            assert head.weights.shape == (length, length)
            # weights times the values give exactly what the module returned in the model's forward pass
            torch.testing.assert_close(head.weights @ head.values, head.output)
            torch.testing.assert_close(head.weights.sum(dim=-1), torch.ones(length))  # each row sums to 1
            assert (head.weights.triu(diagonal=1) == 0).all()  # nothing from the future
    learned = [head for layer in layers for head in layer if head.learned]
    assert len(learned) == (0 if stage == "03_causal_average" else n_layer * n_head)
    for head in learned:  # learned weights are not the average: some row is far from uniform
        assert head.weights.max() > 0.5


def test_stage_03_averages_the_past_uniformly():
    module = load_stage("03_causal_average")
    model = module.LanguageModel(TOKENIZER.vocab_size, tiny_config(module))
    _, [[average]] = attention.capture_attention(model, torch.randint(TOKENIZER.vocab_size, (1, 6)))
    assert not average.learned
    expected = torch.tril(torch.ones(6, 6)) / torch.arange(1, 7)[:, None]  # row t: 1/(t+1) for 0..t
    torch.testing.assert_close(average.weights, expected)


# -- the odds: what generate draws from ------------------------------------------------------------------


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, None), (2.0, 5)])
def test_the_odds_are_what_generate_samples_from(temperature, top_k, monkeypatch):
    module = load_stage("10_gpt")
    torch.manual_seed(0)
    model = module.LanguageModel(TOKENIZER.vocab_size, tiny_config(module)).eval()
    idx = torch.tensor([TOKENIZER.encode("All:\nSpe")])  # (1, T)
    drawn_from = []  # the probabilities generate hands to torch.multinomial
    multinomial = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, **kw: drawn_from.append(probs) or multinomial(probs, **kw))
    model.generate(idx, max_new_tokens=1, temperature=temperature, top_k=top_k)

    logits, _ = attention.capture_attention(model, idx)
    probs = attention.next_char_probs(logits, temperature, top_k)
    torch.testing.assert_close(probs, drawn_from[0][0])
    expected = F.softmax(common.adjust_logits(model(idx)[0][:, -1, :], temperature, top_k), dim=-1)[0]
    torch.testing.assert_close(probs, expected)
    assert int((probs > 0).sum()) == (top_k or TOKENIZER.vocab_size)


def test_the_printed_odds_follow_temperature_and_top_k(tmp_path, capsys):
    ckpt = save_tiny_checkpoint("10_gpt", tmp_path / "gpt.pt")
    base = ["10", "--checkpoint", ckpt, "--prompt", "All:", "--text"]
    code, out, err = run_tool(capsys, *base)
    assert code == 0, err
    warm = printed_odds(out)
    assert len(warm) == 10  # --odds defaults to 10
    assert sum(warm.values()) <= 1.0 + 5e-3  # each rounded to 3 decimals
    assert "the other 24:" in out  # a vocabulary of 34: the rest, summed

    _, out, _ = run_tool(capsys, *base, "--temperature", "0.3")
    cold = printed_odds(out)
    assert "temperature 0.3" in out
    assert max(cold.values()) > max(warm.values())  # a lower temperature sharpens the odds

    code, out, err = run_tool(capsys, *base, "--top_k", "3")
    assert code == 0, err
    kept = printed_odds(out)
    assert list(kept) == list(warm)[:3]  # the same three likeliest ...
    assert sum(kept.values()) == pytest.approx(1.0, abs=2e-3)  # ... now sharing all the probability
    assert "the remaining 31: probability 0 (top_k 3 leaves them out)" in out


# -- the command line ----------------------------------------------------------------------------------


def test_a_trained_stage_10_draws_its_maps(tmp_path, run_cli, small_text_file, capsys):
    pytest.importorskip("matplotlib")
    module = load_stage("10_gpt")
    ckpt = tmp_path / "gpt.pt"
    code, _, err = run_cli(module, tiny_flags(module) + ["--data", str(small_text_file), "--checkpoint", str(ckpt)])
    assert code == 0, err

    code, out, err = run_tool(capsys, "10", "--checkpoint", ckpt, "--prompt", "All: \nSp")
    assert code == 0, err
    png = tmp_path / "gpt.attention.png"  # the default: beside the checkpoint
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert f"attention maps: {png}" in out
    assert "reads All:␣⏎Sp" in out  # newlines and spaces shown visibly
    assert printed_odds(out)

    chosen = tmp_path / "new folder" / "maps.png"
    code, out, err = run_tool(capsys, "10", "--checkpoint", ckpt, "--prompt", "All:", "--out", chosen)
    assert code == 0, err
    assert chosen.read_bytes().startswith(PNG_MAGIC)


def test_without_matplotlib_the_attention_is_text(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, installed or not
    ckpt = save_tiny_checkpoint("05_multi_head_attention", tmp_path / "05.pt")
    code, out, err = run_tool(capsys, "5", "--checkpoint", ckpt, "--prompt", "All: sp")
    assert code == 0, err
    assert "pip install matplotlib" in out
    assert "position 6 'p' (the last" in out
    assert re.search(r"layer 1, head 2: +\d+ '.' [01]\.\d\d", out)  # its heaviest positions, with their weights
    assert printed_odds(out)
    assert not list(tmp_path.glob("*.png"))


def test_the_text_view_at_chosen_positions(tmp_path, capsys):
    ckpt = save_tiny_checkpoint("03_causal_average", tmp_path / "03.pt")
    code, out, err = run_tool(capsys, "3", "--checkpoint", ckpt, "--prompt", "All: sp", "--positions", "0", "-3")
    assert code == 0, err
    assert "position 0 'A' weighs most:\n  the fixed causal average: 0 'A' 1.00" in out
    assert "position 4 '␣'" in out  # -3 of 7 characters; the space made visible
    assert "4 '␣' 0.20   3 ':' 0.20   2 'l' 0.20" in out  # uniform over the past, the nearest first
    assert "position 6" not in out  # --positions replaces the default, the last


def test_chosen_layers_are_shown_under_their_own_numbers(tmp_path, capsys):
    ckpt = save_tiny_checkpoint("10_gpt", tmp_path / "gpt.pt", n_layer=3)
    code, out, err = run_tool(capsys, "10", "--checkpoint", ckpt, "--prompt", "All:", "--layers", "-1", "--text")
    assert code == 0, err
    assert "layer 3, head 1:" in out and "layer 3, head 2:" in out
    assert "layer 1," not in out and "layer 2," not in out
    code, out, err = run_tool(capsys, "10", "--checkpoint", ckpt, "--prompt", "All:", "--layers", "1", "3", "--text")
    assert code == 0, err
    assert "layer 1, head 1:" in out and "layer 3, head 2:" in out and "layer 2," not in out
    assert attention.check_layers(None, 3) == [0, 1, 2] and attention.check_layers([3, -1], 3) == [2]


@pytest.mark.parametrize("stage", ["01_bigram", "02_position_embedding"])
def test_stages_without_attention_say_so_and_still_show_the_odds(stage, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(stage, tmp_path / "m.pt")
    code, out, err = run_tool(capsys, stage[:2], "--checkpoint", ckpt, "--prompt", "All:")
    assert code == 0, err
    assert f"{stage} has no attention" in out
    assert len(printed_odds(out)) == 10
    assert not list(tmp_path.glob("*.png"))


def test_a_long_prompt_is_cropped_as_generate_does(tmp_path, capsys):
    ckpt = save_tiny_checkpoint("04_self_attention_head", tmp_path / "04.pt")
    code, out, err = run_tool(capsys, "4", "--checkpoint", ckpt, "--prompt", "First Citizen:", "--text")
    assert code == 0, err
    assert f"the prompt has 14 characters, more than block_size {BLOCK}" in out
    assert "reads Citizen:" in out  # its last 8
    assert "position 7 ':' (the last" in out


def test_an_empty_prompt_starts_from_a_newline(tmp_path, capsys):
    ckpt = save_tiny_checkpoint("04_self_attention_head", tmp_path / "04.pt")
    code, out, err = run_tool(capsys, "4", "--checkpoint", ckpt, "--text")
    assert code == 0, err
    assert "the prompt is empty: the model reads a newline" in out
    assert "position 0 '⏎'" in out


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--prompt", "Zebra"], ["error: 2 character(s) not in the vocabulary: 'Z', 'b'"]),
        (["--top_k", "99"], ["error: --top_k 99 is larger than the vocabulary (34 characters)"]),
        (["--positions", "12"], ["error: --positions 12: the model reads 4 character(s), positions 0 to 3"]),
        (["--temperature", "0"], ["error: argument --temperature", "must be greater than 0"]),
        (["--odd", "3"], ["--odd (did you mean --odds?)"]),
        (["--layers", "0"], ["error: --layers 0: the model has 2 layer(s) of attention, 1 to 2 (or -2 to -1"]),
        (["--layers", "3"], ["error: --layers 3: the model has 2 layer(s)"]),
    ],
)
def test_bad_flags_are_one_line(argv, fragments, tmp_path, capsys):
    ckpt = save_tiny_checkpoint("10_gpt", tmp_path / "gpt.pt")
    code, _, err = run_tool(capsys, "10", "--checkpoint", ckpt, "--prompt", "All:", *argv)
    one_line_error(code, err, *fragments)


def test_a_missing_foreign_or_unknown_checkpoint_or_stage_is_one_line(tmp_path, capsys):
    code, _, err = run_tool(capsys, "10")  # the default checkpoint, which no test trains
    one_line_error(code, err, "error: no checkpoint at", "python stages/10_gpt.py")

    ckpt = save_tiny_checkpoint("04_self_attention_head", tmp_path / "04.pt")
    code, _, err = run_tool(capsys, "5", "--checkpoint", ckpt)
    one_line_error(code, err, "error:", "was saved by stage 04_self_attention_head, not 05_multi_head_attention")

    code, _, err = run_tool(capsys, "42", "--checkpoint", ckpt)
    one_line_error(code, err, "error: no stage '42'")

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    code, _, err = run_tool(capsys, "4", "--checkpoint", damaged)
    one_line_error(code, err, f"error: {damaged}")


def test_a_stage_after_positions_is_told_what_happened(tmp_path, capsys):
    """--positions takes every number after it, the stage's too: the error says so, and how to write it."""
    code, _, err = run_tool(capsys, "--positions", "0", "-1", "10")
    one_line_error(
        code, err, "no stage given: --positions took every number after it (0 -1 10)", "tools/attention.py 10"
    )
    code, _, err = run_tool(capsys, "--prompt", "All:")
    one_line_error(code, err, "no stage given;")
