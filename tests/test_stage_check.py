"""The stage check is honest: each project stage passes as its own answer, right answers written
another way pass, and the mistakes learners make are refused, each by its own check and message.

The learner's files are the project's stages with a mistake written in (a small textual edit), or
with a part written another way appended (a class defined again replaces the stage's own)."""

import pytest

import common
import exercises.check
import harness.checkpoints
import tools.stages
from conftest import one_line_error
from exercises.checks import stage

STAGE_FILE = {n: tools.stages.STAGE_DIR / f"{tools.stages.STAGES[n - 1]}.py" for n in range(1, 11)}


def learner_file(tmp_path, number: int, *replacements: tuple[str, str], appended: str = ""):
    """Stage number's file as a learner might write it: each (old, new) replaced, then appended."""
    source = STAGE_FILE[number].read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    path = tmp_path / f"{number:02d}_mine.py"
    path.write_text(source + appended, encoding="utf-8")
    return path


def outcomes(path, number: int) -> dict[str, exercises.check.Outcome]:
    found = exercises.check.check_stage(number, path, train=False)
    return {o.name: o for o in found}


def failed(results: dict) -> dict[str, str]:
    return {name: o.message for name, o in results.items() if o.status != "passed"}


# -- right answers ----------------------------------------------------------------------------------

BATCHED = '''

class MultiHeadAttention(nn.Module):
    """Every head at once: the heads as a batch dimension of one query-key-value layer."""

    def __init__(self, config, num_heads, head_size):
        super().__init__()
        self.n_head, self.head_size = num_heads, head_size
        self.qkv = nn.Linear(config.n_embd, 3 * num_heads * head_size, bias=BIAS)
        self.proj = nn.Linear(num_heads * head_size, config.n_embd) if PROJ else nn.Identity()
        self.p = getattr(config, "dropout", 0.0)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.n_head * self.head_size, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))
        p = self.p if self.training else 0.0
        if SDPA:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            wei = torch.einsum("bhtd,bhsd->bhts", q, k) * self.head_size**-0.5
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # built here, not a buffer
            wei = F.dropout(wei.masked_fill(~mask, float("-inf")).softmax(dim=-1), p)
            out = torch.einsum("bhts,bhsd->bhtd", wei, v)
        return F.dropout(self.proj(out.transpose(1, 2).reshape(B, T, -1)), p)
'''


def batched(number: int, sdpa: bool, bias: bool = False) -> str:
    """Stage number's attention as one batched module, appended to its file (stage 04: its one Head)."""
    text = BATCHED.replace("SDPA", str(sdpa)).replace("BIAS", str(bias)).replace("PROJ", str(number >= 8))
    if number == 4:  # one head of n_embd: the same module, called as stage 04 calls its Head
        text += "\n\nclass Head(MultiHeadAttention):\n    def __init__(self, config, head_size):\n"
        text += "        super().__init__(config, 1, head_size)\n"
    return text


LOOP = (
    "        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])",
    "        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])",
)
LOOPED = ("        x = self.blocks(x)  # (B, T, C)", "        for block in self.blocks:\n            x = block(x)")
FF_BY_HAND = """

class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))
"""
NORM_BY_HAND = """

class Norm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:]) * self.gain
"""

LECTURE_NORM = """

class LectureNorm(nn.Module):  # the lecture's LayerNorm1d, a module: its variance is the unbiased one
    def __init__(self, n, eps=1e-5):
        super().__init__()
        self.eps, self.gamma, self.beta = eps, nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

    def forward(self, x):
        xhat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + self.eps)
        return self.gamma * xhat + self.beta
"""

SUM_FIRST = ("x = x + self.sa(x)", "x = self.sa(x) + x")
# each right answer: (replacements, text appended)
RIGHT = {
    2: {
        "position table as a parameter": (
            (
                (
                    "self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)",
                    "self.position_embedding_table = nn.Parameter(torch.randn(config.block_size, config.n_embd))",
                ),
                (
                    "pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))",
                    "pos_emb = self.position_embedding_table[:T]",
                ),
            ),
            "",
        ),
        "no bias in the head": (
            (("nn.Linear(config.n_embd, vocab_size)", "nn.Linear(config.n_embd, vocab_size, bias=False)"),),
            "",
        ),
    },
    3: {
        "matrix multiply": (
            (
                (
                    "wei = F.softmax(wei, dim=-1)  # (T, T) each row sums to 1",
                    "wei = self.tril[:T, :T] / self.tril[:T, :T].sum(dim=1, keepdim=True)",
                ),
            ),
            "",
        ),
        "loop": ((("out = wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)", "out = average_loop(x)"),), ""),
    },
    4: {"einsum, mask built in forward": ((), batched(4, sdpa=False)), "sdpa, biases": ((), batched(4, True, True))},
    5: {"einsum, mask built in forward": ((), batched(5, sdpa=False)), "sdpa, biases": ((), batched(5, True, True))},
    6: {"sdpa": ((), batched(6, sdpa=True)), "GELU, by hand": ((), FF_BY_HAND)},
    7: {"a loop": ((LOOP, LOOPED), ""), "einsum": ((), batched(7, sdpa=False))},
    8: {"a loop": ((LOOP, LOOPED), ""), "sdpa, the sum the other way": ((SUM_FIRST,), batched(8, sdpa=True))},
    9: {
        "norm by hand": (
            (("self.ln1 = nn.LayerNorm", "self.ln1 = Norm"), ("self.ln_f = nn.LayerNorm", "self.ln_f = Norm")),
            NORM_BY_HAND,
        ),
        "a loop, einsum": ((LOOP, LOOPED), batched(9, sdpa=False)),
        "the lecture's LayerNorm1d": ((("nn.LayerNorm(", "LectureNorm("),), LECTURE_NORM),
    },
    10: {"sdpa, dropout_p": ((), batched(10, sdpa=True)), "a loop, einsum": ((LOOP, LOOPED), batched(10, sdpa=False))},
}


@pytest.mark.parametrize("number", list(stage.NUMBERS))
def test_each_project_stage_passes_as_its_own_answer(number):
    results = outcomes(STAGE_FILE[number], number)
    assert not failed(results), failed(results)


@pytest.mark.parametrize("number", list(stage.NUMBERS))
def test_the_stage_before_copied_unchanged_is_refused(number):
    results = outcomes(STAGE_FILE[number - 1], number)
    assert failed(results), results


@pytest.mark.parametrize(
    ("number", "name"), [(n, name) for n, variants in RIGHT.items() for name in variants], ids=lambda v: str(v)
)
def test_a_right_answer_written_another_way_passes(tmp_path, number, name):
    replacements, appended = RIGHT[number][name]
    results = outcomes(learner_file(tmp_path, number, *replacements, appended=appended), number)
    assert not failed(results), failed(results)


# -- wrong answers ----------------------------------------------------------------------------------

CAUSAL = "causal: no prediction depends on a later character"
GENERATE = "generate: crops to block_size and samples"
LEAKY_MASK = (
    "torch.tril(torch.ones(config.block_size, config.block_size))",
    "torch.tril(torch.ones(config.block_size, config.block_size), diagonal=1)",
)
BY_COLUMNS = ("wei = F.softmax(wei, dim=-1)", "wei = F.softmax(wei, dim=-2)")
UNSCALED = ("wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5", "wei = q @ k.transpose(-2, -1)")
BY_N_EMBD = ("wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5", "wei = q @ k.transpose(-2, -1) * C**-0.5")
SHARED_HEADS = (
    "nn.ModuleList([Head(config, head_size) for _ in range(num_heads)])",
    "nn.ModuleList([Head(config, head_size)] * num_heads)",
)
NO_SA_RESIDUAL = ("x = x + self.sa(x)  # (B, T, C) the block adds", "x = self.sa(x)  # (B, T, C) the block adds")
NO_FF_RESIDUAL = ("x = x + self.ffwd(x)  # (B, T, C) ...", "x = self.ffwd(x)  # (B, T, C) ...")
ONE_RESIDUAL = (
    "x = x + self.sa(x)  # (B, T, C) the block adds to the residual stream ...\n"
    "        x = x + self.ffwd(x)  # (B, T, C) ... instead of replacing it",
    "x = x + self.ffwd(self.sa(x))",
)
# each mistake: (stage, replacements, the check that refuses it, a fragment of its message)
MISTAKES = {
    "02 without positions": (2, (("x = tok_emb + pos_emb", "x = tok_emb"),), "each prediction", "position is not used"),
    "02 without a head": (2, (("logits = self.lm_head(x)", "logits = x"),), "shapes and a loss", "end with lm_head"),
    "02 generate uncropped": (2, (("idx_cond = idx[:, -self.block_size :]", "idx_cond = idx"),), GENERATE, "crop"),
    "03 mask lets the next one in": (3, (LEAKY_MASK,), CAUSAL, "changes when the character at position"),
    "03 softmax over the queries": (3, (BY_COLUMNS,), "equal weights", "each column of the weights sums to 1"),
    "03 a sum, not a mean": (
        3,
        (("wei = F.softmax(wei, dim=-1)  # (T, T) each row sums to 1", "wei = self.tril[:T, :T]"),),
        "equal weights",
        "sum to 8, not 1",
    ),
    "04 mask lets the next one in": (4, (LEAKY_MASK,), CAUSAL, "the very one it should predict"),
    "04 softmax over the queries": (4, (BY_COLUMNS,), "each row of attention", "the softmax runs over the queries"),
    "04 unscaled": (4, (UNSCALED,), "scores scaled", "are not scaled"),
    "04 stage 03's average kept": (
        4,
        (("wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5", "wei = torch.zeros_like(q @ k.transpose(-2, -1))"),),
        "attention weights that depend",
        "do not depend on the data",
    ),
    "05 heads share one module": (5, (SHARED_HEADS,), "heads with their own", "share one module"),
    "05 scaled by n_embd, as in the video": (5, (BY_N_EMBD,), "scores scaled", "description corrects it"),
    "05 mask lets the next one in": (5, (LEAKY_MASK,), CAUSAL, "the very one it should predict"),
    "06 no ReLU": (6, (("            nn.ReLU(),\n", ""),), "a non-linear feed-forward", "is linear"),
    "06 feed-forward never called": (6, (("        x = self.ffwd(x)  # (B, T, C)\n", ""),), "a non-linear", "found no"),
    "06 feed-forward before attention": (
        6,
        (
            (
                "x = self.sa_heads(x)  # (B, T, C) n_head heads side by side\n        x = self.ffwd(x)  # (B, T, C)",
                "x = self.ffwd(x)  # (B, T, C)\n        x = self.sa_heads(x)  # (B, T, C)",
            ),
        ),
        "a non-linear",
        "runs before attention",
    ),
    "07 three blocks always": (7, (("range(config.n_layer)", "range(3)"),), "n_layer blocks", "attention layer(s)"),
    "07 one block repeated": (
        7,
        (("[Block(config) for _ in range(config.n_layer)]", "[Block(config)] * config.n_layer"),),
        "n_layer blocks",
        "share one set of weights",
    ),
    "07 a block without feed-forward": (
        7,
        (("        x = self.sa(x)  # (B, T, C)\n        x = self.ffwd(x)  # (B, T, C)\n", "        x = self.sa(x)\n"),),
        "n_layer blocks",
        "feed-forward layer(s)",
    ),
    "08 attention replaces the stream": (8, (NO_SA_RESIDUAL,), "sublayers that add", "attention's output replaces"),
    "08 feed-forward replaces the stream": (
        8,
        (NO_FF_RESIDUAL,),
        "sublayers that add",
        "feed-forward's output replaces",
    ),
    "08 one addition around both": (8, (ONE_RESIDUAL,), "sublayers that add", "never reaches the stream"),
    "09 post-norm": (
        9,
        (
            ("x = x + self.sa(self.ln1(x))", "x = self.ln1(x + self.sa(x))"),
            ("x = x + self.ffwd(self.ln2(x))", "x = self.ln2(x + self.ffwd(x))"),
        ),
        "a norm before each",
        "post-norm",
    ),
    "04 a mask that hides each position from itself": (
        4,
        (
            (
                "torch.ones(config.block_size, config.block_size))",
                "torch.ones(config.block_size, config.block_size), -1)",
            ),
        ),
        "shapes and a loss",
        "the loss is nan: often a row of attention scores all -inf",
    ),
    "10 dropout written in place, on in eval too": (
        10,
        (("wei = self.dropout(wei)", "wei = torch.nn.functional.dropout(wei, 0.2)"),),
        "causal",
        "in eval mode, two passes over the same characters give other logits",
    ),
    "10 generate reads the first position": (
        10,
        (("logits = logits[:, -1, :]", "logits = logits[:, 0, :]"),),
        "generate",
        "the next character comes from the last position, logits[:, -1, :]",
    ),
    "09 no final norm": (9, (("        x = self.ln_f(x)  # (B, T, C)\n", ""),), "a norm before each", "ln_f"),
    "09 feed-forward not normalised": (
        9,
        (("x = x + self.ffwd(self.ln2(x))", "x = x + self.ffwd(x)"),),
        "a norm before each",
        "feed-forward's input is not normalised",
    ),
    "10 dropout left on in eval": (
        10,
        (("out = self.dropout(self.proj(out))", "out = F.dropout(self.proj(out), self.dropout.p)"),),
        "no dropout in eval mode",
        "dropout still acts",
    ),
    "10 a rate of its own": (
        10,
        (("            nn.Dropout(config.dropout),\n", "            nn.Dropout(0.1),\n"),),
        "dropout in training",
        "feed-forward's outputs are zeroed",
    ),
    "10 attention weights never dropped": (
        10,
        (("        wei = self.dropout(wei)  # (B, T, T)\n", ""),),
        "dropout in training",
        "attention weights are all kept",
    ),
    "10 generate takes the likeliest": (
        10,
        (("torch.multinomial(probs, num_samples=1)", "probs.argmax(dim=-1, keepdim=True)"),),
        GENERATE,
        "torch.multinomial",
    ),
}


def only(number: int, name: str) -> list:
    """The checks whose name starts with name, and those they need."""
    checks = stage.checks(number, train=False)
    wanted = {c.name for c in checks if c.name.startswith(name)}
    assert wanted, name
    for check in reversed(checks):
        if check.name in wanted:
            wanted |= set(check.needs)
    return [c for c in checks if c.name in wanted]


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_refused_by_its_check_with_its_own_message(tmp_path, mistake):
    number, replacements, check, said = MISTAKES[mistake]
    path = learner_file(tmp_path, number, *replacements)
    module = exercises.check.load_learner_file(path)
    results = exercises.check.run_checks(only(number, check), module, path)
    refused = [o for o in results if o.name.startswith(check)]
    assert refused and all(o.status == "FAILED" for o in refused), results
    assert any(said in o.message for o in refused), [o.message for o in refused]


def test_every_stage_has_three_mistakes_each_with_its_own_message_and_two_right_answers():
    for number in stage.NUMBERS:
        said = [m[3] for m in MISTAKES.values() if m[0] == number]
        assert len(said) >= 3 and len(set(said)) == len(said), number
        assert len(RIGHT[number]) >= 2


# -- the short run, the band, the command ------------------------------------------------------------


def test_the_short_run_trains_saves_and_samples_outside_the_projects_checkpoints(small_text_file, monkeypatch):
    flags = stage.budget_flags
    monkeypatch.setattr(
        stage, "budget_flags", lambda n, seed=stage.SEED: [*flags(n, seed), "--data", str(small_text_file)]
    )
    monkeypatch.setattr(stage, "STEPS", {2: 20})
    project = common.ROOT / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in project.glob("*")}
    said = stage.trains(2)(stage.reference(2))
    assert said.startswith("20 steps, val loss") and "a checkpoint and a sample" in said
    assert {p.name: p.stat().st_mtime_ns for p in project.glob("*")} == before
    assert not harness.checkpoints.CHECKPOINT_DIR.exists()  # nor where a run without --checkpoint would write


@pytest.mark.parametrize(
    ("spreads", "status", "said"),
    [(0, "passed", "inside the band"), (6, "FAILED", "learns more slowly"), (-6, "passed", "below the band")],
)
def test_a_short_run_is_weighed_against_the_stages_band(monkeypatch, spreads, status, said):
    mean, spread, _ = stage.band(2)
    run = stage.ShortRun(mean + spreads * spread, True, "a sample")
    monkeypatch.setattr(stage, "short_run", lambda module, number, seed=stage.SEED: run)
    module = stage.reference(2)
    results = exercises.check.run_checks(stage.checks(2), module, STAGE_FILE[2])
    assert results[-1].status == status and said in results[-1].message, results[-1]


def test_the_band_is_recorded_with_its_machine_and_date():
    entry = stage.band(10)[2]
    assert entry["machine"].endswith("cores") and entry["date"] and entry["steps"]["10"] == stage.STEPS[10]
    assert all(len(entry["val_loss"][f"{n:02d}"]) >= 3 for n in stage.NUMBERS)


def test_the_command_checks_a_file_and_says_what_is_wrong_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stage, "short_run", lambda module, number, seed=stage.SEED: stage.ShortRun(2.5, True, "x"))
    assert exercises.check.main(["stage", "02"]) == 0
    assert "all 7 checks passed" in capsys.readouterr().out
    path = learner_file(tmp_path, 2, ("x = tok_emb + pos_emb", "x = tok_emb"))
    assert exercises.check.main(["stage", "2", "--file", str(path)]) == 1
    assert "FAILED  each prediction from its own character and position" in capsys.readouterr().out
    for argv, said in (
        (["stage", "11"], "no stage '11' to check"),
        (["stage", "04", "--file", str(tmp_path / "nope.py")], "no exercise file at"),
    ):
        code = exercises.check.main(argv)
        one_line_error(code, capsys.readouterr().err, said)
    path.write_text("def broken(:\n")
    one_line_error(exercises.check.main(["stage", "02", "--file", str(path)]), capsys.readouterr().err, "line 1")


def test_a_learners_copy_beside_the_stages_is_not_a_stage(tmp_path, monkeypatch):
    for p in tools.stages.stage_files():
        (tmp_path / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "04_mine.py").write_text(STAGE_FILE[4].read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "00_mine.py").write_text("", encoding="utf-8")
    monkeypatch.setattr(tools.stages, "STAGE_DIR", tmp_path)
    assert tools.stages.stage_names() == list(tools.stages.STAGES)
    assert tools.stages.load_stage("04").__file__ == str(tmp_path / "04_self_attention_head.py")
