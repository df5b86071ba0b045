"""Shared fixtures: stage loading, tiny configurations, a small text, and a command-line runner."""

import dataclasses
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402
import harness.errors  # noqa: E402
import tools.stages  # noqa: E402

STAGE_FILES = tools.stages.stage_files()
STAGE_IDS = [p.stem for p in STAGE_FILES]

# "small for testing efficiency": every stage's model at a size that trains in a blink
TINY = dict(batch_size=4, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=0.0, eval_iters=2)

# a text with enough structure to learn from and a vocabulary of its own (no 'z', 'Q', ...)
SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 60


def one_line_error(code: int, err: str, *fragments: str, exit_code: int = harness.errors.EXIT_USER_ERROR) -> None:
    """The failure contract: the given exit status, one line on stderr, saying what is wrong."""
    assert code == exit_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


load_stage = tools.stages.load_stage


def tiny_config(module: ModuleType, **overrides):
    """The stage's Config with TINY values for every field it has."""
    names = {f.name for f in dataclasses.fields(module.Config)}
    values = {k: v for k, v in {**TINY, **overrides}.items() if k in names}
    return module.Config(**values)


VOCAB = 65  # tiny Shakespeare's vocabulary size


def number(stage: str) -> int:
    return int(stage[:2])


def stages_from(first: int) -> list[str]:
    return [s for s in STAGE_IDS if number(s) >= first]


def build(module: ModuleType, seed: int = 0, **overrides):
    """The stage's model at the TINY size, its weights drawn from a fixed seed."""
    torch.manual_seed(seed)
    return module.LanguageModel(VOCAB, tiny_config(module, **overrides))


def heads(model) -> list:
    """Every attention head in a model: the modules with key, query and value layers."""
    return [m for m in model.modules() if all(hasattr(m, n) for n in ("key", "query", "value"))]


def tiny_flags(module: ModuleType, max_iters: int = 20, eval_interval: int = 10, **overrides) -> list[str]:
    """Command-line flags for a tiny, seconds-long run of a stage; overrides only where its Config has the field."""
    names = {f.name for f in dataclasses.fields(module.Config)}
    values = {**TINY, "max_iters": max_iters, "eval_interval": eval_interval, **overrides}
    flags = []
    for k, v in values.items():
        if k not in names:
            continue
        if isinstance(v, bool):  # a switch: --lr_decay or --no-lr_decay
            flags.append(f"--{k}" if v else f"--no-{k}")
        else:
            flags += [f"--{k}", str(v)]
    return flags + ["--num_tokens", "40", "--device", "cpu"]


@pytest.fixture(scope="session")
def small_text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_project_checkpoints(tmp_path, monkeypatch):
    """A test that forgets --checkpoint (or a check that regresses) trains into tmp_path, never into
    the project's checkpoints/ that the recorded figures come from."""
    monkeypatch.setattr(harness.checkpoints, "CHECKPOINT_DIR", tmp_path / "checkpoints")


def torch_global_settings() -> dict:
    """Process-wide settings of torch that a run must leave as it found them, compiled or not."""
    return {
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "grad enabled": torch.is_grad_enabled(),
        "autocast": torch.is_autocast_enabled("cpu"),
    }


@pytest.fixture(autouse=True)
def torch_left_as_found():
    """No test leaves torch's global configuration changed for the tests after it."""
    before = torch_global_settings()
    yield
    assert torch_global_settings() == before, "this test changed torch's global settings"


@pytest.fixture
def run_cli(capsys):
    """Run a stage's main() in-process as the command line would: returns (exit code, stdout, stderr)."""

    def run(module: ModuleType, argv: list[str]) -> tuple[int, str, str]:
        code = harness.run_main(module.main, argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def pytest_configure(config):
    for stage in STAGE_IDS:
        config.addinivalue_line("markers", f"stage{stage[:2]}: the tests of stages/{stage}.py alone")


def pytest_collection_modifyitems(items):
    """`python -m pytest -m stage04` runs the tests that stage 04 is a parameter of, and nothing else."""
    for item in items:
        params = item.callspec.params.values() if hasattr(item, "callspec") else ()
        for stage in {value for value in params if isinstance(value, str) and value in STAGE_IDS}:
            item.add_marker(f"stage{stage[:2]}")
