"""tools/plot.py and tools/train_all.py: the charts, the record of the runs, and their one-line failures."""

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import pytest
import torch

import harness
import harness.checkpoints
import harness.cli
import harness.training
import tools.machine
import tools.stages
from conftest import ROOT, SMALL_TEXT, load_stage, one_line_error
from tools import dropout, pages, plot, train_all

PNG_MAGIC = b"\x89PNG"

# tiny runs: flags every stage accepts (stage 01 has no --n_embd), given after `--` so they beat --quick's
TINY_EXTRA = [
    "--max_iters",
    "20",
    "--eval_interval",
    "10",
    "--eval_iters",
    "2",
    "--batch_size",
    "4",
    "--block_size",
    "8",
]
TINY_EXTRA += ["--num_tokens", "40", "--device", "cpu"]


def fake_history(directory, stage: str, start: float = 4.2) -> list[dict]:
    """A loss history as a training run would leave it beside its checkpoint."""
    rows = [
        {"step": s, "train_loss": start - 0.05 * s, "val_loss": start - 0.04 * s, "elapsed_s": 0.1 * s}
        for s in (0, 10, 19)
    ]
    harness.checkpoints.write_history(harness.checkpoints.history_path(directory / f"{stage}.pt"), rows)
    return rows


# -- stage names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["9", "09", "09_layer_norm", "layer_norm", "stages/09_layer_norm.py"])
def test_a_stage_is_named_by_number_or_name(name):
    assert tools.stages.resolve_stage(name) == "09_layer_norm"


@pytest.mark.parametrize("name", ["11", "0", "norm", "09_layer"])
def test_an_unknown_stage_name_is_an_error(name):
    with pytest.raises(harness.UserError, match="no stage"):
        tools.stages.resolve_stage(name)


# -- plot ------------------------------------------------------------------------------------------


def test_plot_one_stage_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fake_history(tmp_path, "09_layer_norm")
    code = plot.main(["9", "--checkpoints", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    png = tmp_path / "09_layer_norm.png"  # the default for one stage: DIR/<stage>.png
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert out.strip() == str(png)


def test_plot_all_stages_with_a_history_writes_one_chart(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for i, stage in enumerate(["01_bigram", "05_multi_head_attention", "10_gpt"]):
        fake_history(tmp_path, stage, start=4.2 - 0.1 * i)
    assert plot.stages_with_history(tmp_path) == ["01_bigram", "05_multi_head_attention", "10_gpt"]

    code = plot.main(["--checkpoints", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)  # the default for several: DIR/curves.png
    assert out.strip() == str(tmp_path / "curves.png")

    chosen = tmp_path / "new folder" / "two.png"  # --out, in a folder that does not exist yet
    code = plot.main(["1", "10", "--checkpoints", str(tmp_path), "--out", str(chosen)])
    assert code == 0, capsys.readouterr().err
    assert chosen.read_bytes().startswith(PNG_MAGIC)


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    """Runs with or without matplotlib installed: a None in sys.modules makes `import matplotlib` fail."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fake_history(tmp_path, "09_layer_norm")
    code = plot.main(["9", "--checkpoints", str(tmp_path)])
    _, err = capsys.readouterr()
    one_line_error(code, err, "error:", "matplotlib", "pip install matplotlib")
    assert not list(tmp_path.glob("*.png"))
    assert plot.have_matplotlib() is False


def test_plot_unknown_stage(tmp_path, capsys):
    fake_history(tmp_path, "09_layer_norm")
    code = plot.main(["42", "--checkpoints", str(tmp_path)])
    one_line_error(code, capsys.readouterr().err, "error: no stage '42'")


def test_plot_stage_without_history(tmp_path, capsys):
    fake_history(tmp_path, "01_bigram")
    code = plot.main(["9", "--checkpoints", str(tmp_path)])
    one_line_error(
        code, capsys.readouterr().err, "error: no loss history for 09_layer_norm", "python stages/09_layer_norm.py"
    )

    code = plot.main(["--checkpoints", str(tmp_path / "empty")])  # no STAGE, and no history at all
    one_line_error(code, capsys.readouterr().err, "error: no loss histories in")


def test_plot_to_an_unwritable_place(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fake_history(tmp_path, "09_layer_norm")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # unwritable even for root, unlike a chmod
    code = plot.main(["9", "--checkpoints", str(tmp_path), "--out", str(blocker / "x.png")])
    one_line_error(code, capsys.readouterr().err, "error: cannot write", "--out")


# -- train_all: reading a stage's results --------------------------------------------------------------


def test_the_preset_of_a_stage_with_presets(tmp_path):
    chosen = train_all.collect(
        "10_gpt", ["model: 1,234 parameters", "preset: cpu (chosen for cpu; ...)"], tmp_path, 1.0, []
    )
    assert (chosen.parameters, chosen.preset) == (1234, "cpu")
    table = pages.stages_table(train_all.record_of([chosen], "python tools/train_all.py"), links=False)
    assert "(preset cpu)" in table.splitlines()[-1]
    assert train_all.collect("10_gpt", [], tmp_path, 1.0, ["--preset", "video"]).preset == "video"
    assert train_all.collect("10_gpt", [], tmp_path, 1.0, []).preset == "see flags"
    assert train_all.collect("01_bigram", ["model: 4,225 parameters"], tmp_path, 1.0, []).preset is None


# -- train_all end to end ----------------------------------------------------------------------------


def in_process(cmd: list[str]) -> tuple[int, list[str], list[str], float]:
    """train_all's run_process for `python stages/NN.py FLAGS`, run in this process: the same lines, no start-up."""
    module = load_stage(Path(cmd[1]).stem)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = harness.run_main(module.main, cmd[2:])
    return code, out.getvalue().splitlines(), err.getvalue().splitlines(), time.perf_counter() - t0


def test_run_process_echoes_a_command_s_lines_and_returns_its_status_and_output(capsys):
    script = "import sys; print('step 0: fine'); print('oops', file=sys.stderr); sys.exit(3)"
    code, out, err, seconds = train_all.run_process([sys.executable, "-c", script])
    assert (code, out, err) == (3, ["step 0: fine"], ["oops"]) and seconds > 0
    assert "    step 0: fine" in capsys.readouterr().out  # echoed as it came, indented


def test_train_all_quick_trains_a_stage_and_records_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_all, "run_process", in_process)
    data = tmp_path / "small.txt"
    data.write_text(SMALL_TEXT, encoding="utf-8")
    record_path = tmp_path / "runs.json"
    argv = ["--quick", "--stages", "2", "--checkpoints", str(tmp_path), "--record", str(record_path)]
    argv += ["--data", str(data), "--"]

    code = train_all.main(argv + TINY_EXTRA)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[1/1] 02_position_embedding" in out  # the user sees which stage runs

    record = json.loads(record_path.read_text(encoding="utf-8"))
    assert record["command"].startswith("python tools/train_all.py --quick")
    assert record["note"] == "quick mode: 20 iterations per stage, not the stages' defaults"  # the flags after -- won
    assert record["machine"] == tools.machine.machine_name() and record["torch"] == torch.__version__.split("+")[0]
    assert list(record["stages"]) == ["02_position_embedding"]
    table = out.split(pages.measured_by(record))[1]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in table.splitlines() if line.startswith("| 0")]
    assert [r[0] for r in rows] == ["02"]

    vocab = len(set(SMALL_TEXT))
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert len(results) == 1
    for row, result, stage in zip(rows, results, ["02_position_embedding"], strict=True):
        module = load_stage(stage)
        model = module.LanguageModel(vocab, module.Config(batch_size=4, block_size=8))
        parameters = sum(p.numel() for p in model.parameters())
        history = harness.checkpoints.read_history(tmp_path / f"{stage}.history.csv")
        last = history[-1]
        assert last["step"] == 19
        concept = module.__doc__.splitlines()[0].removeprefix(f"Stage {stage[:2]}: ").rstrip(".")
        assert row[1:5] == [
            concept,
            f"{parameters:,}",
            f"{last['val_loss']:.4f}",
            harness.training.LECTURE.get((stage, result["preset"]), "—"),
        ]
        assert row[5].endswith(" s") and float(row[5][:-2]) >= 0  # seconds, however few in-process
        run = record["stages"][stage]
        assert run["parameters"] == parameters and run["steps"] == 20 and run["concept"] == concept
        assert run["train_loss"] == pytest.approx(last["train_loss"]) and run["val_loss"] == pytest.approx(
            last["val_loss"]
        )
        assert run["history"] == [[r["step"], r["train_loss"], r["val_loss"]] for r in history]
        assert run["sample"] == (tmp_path / f"{stage}.sample.txt").read_text(encoding="utf-8")
        assert result["stage"] == stage and result["parameters"] == parameters
        assert isinstance(result["wall_time_s"], float) and run["wall_time_s"] == result["wall_time_s"]

    assert (tmp_path / "curves.png").exists() == plot.have_matplotlib()


def test_train_all_checks_where_the_record_goes_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = train_all.main(
        ["--quick", "--stages", "01", "--checkpoints", str(tmp_path), "--record", str(blocker / "runs.json")]
        + ["--", *TINY_EXTRA]
    )
    out, err = capsys.readouterr()
    one_line_error(code, err, "error:", "--record")
    assert "01_bigram" not in out and not list(tmp_path.glob("*.pt"))  # checked before any training


def test_train_all_unknown_stage(tmp_path, capsys):
    code = train_all.main(["--stages", "01,99", "--checkpoints", str(tmp_path), "--record", str(tmp_path / "r.json")])
    one_line_error(code, capsys.readouterr().err, "error: no stage '99'")


def test_train_all_stops_at_a_failing_stage(tmp_path, capsys, monkeypatch):
    """The stage's process is a stand-in that fails as a stage does, with its one line on stderr."""
    said = "python stages/01_bigram.py: error: unknown argument(s): --max_iterz (did you mean --max_iters?)"
    monkeypatch.setattr(train_all, "run_process", lambda cmd: (2, ["device: cpu"], [said], 0.5))
    record_path = tmp_path / "runs.json"
    record_path.write_text("{}\n", encoding="utf-8")
    code = train_all.main(
        ["--stages", "01", "--checkpoints", str(tmp_path), "--record", str(record_path), "--", "--max_iterz", "5"]
    )
    _, err = capsys.readouterr()
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: stage 01_bigram failed (exit status 2")
    assert "the record is unchanged" in lines[0]
    assert any(said in line for line in lines[1:])  # the tail of its stderr
    assert record_path.read_text(encoding="utf-8") == "{}\n"
    assert not (tmp_path / "results.json").exists()


def test_only_a_full_run_at_the_defaults_replaces_the_projects_record(tmp_path):
    def where(*argv: str, extra: tuple[str, ...] = ()):
        return train_all.record_path(train_all.build_parser().parse_args(list(argv)), list(extra))

    assert where() == harness.training.RECORD
    for partial in (["--quick"], ["--stages", "01"], ["--data", "mine.txt"]):
        assert where(*partial) is None, partial
    assert where(extra=("--max_iters", "10")) is None
    assert where("--quick", "--record", str(tmp_path / "r.json")) == tmp_path / "r.json"


def test_a_partial_run_leaves_the_projects_record_and_pages_alone(tmp_path, capsys, monkeypatch):
    """--quick, --stages or stage flags without --record: docs/runs.json and the pages stay as they are.
    The stage's process is a stand-in that leaves what a run leaves (the end to end runs are above)."""

    def a_run(cmd: list[str]) -> tuple[int, list[str], list[str], float]:
        ckpt = Path(cmd[cmd.index("--checkpoint") + 1])
        ckpt.with_suffix(".history.csv").write_text("step,train_loss,val_loss,elapsed_s\n19,2.5,2.6,0.1\n")
        ckpt.with_suffix(".sample.txt").write_text("ROMEO:\n", encoding="utf-8")
        return 0, ["model: 4,225 parameters"], [], 0.5

    def no_pages(sources):
        raise AssertionError("a partial run made the pages")

    monkeypatch.setattr(train_all, "run_process", a_run)
    monkeypatch.setattr(pages, "write_pages", no_pages)
    kept = [harness.training.RECORD, ROOT / "README.md", pages.PAGES / "01_bigram.md"]
    before = [p.read_bytes() for p in kept]
    monkeypatch.setattr(harness.training, "RECORD", tmp_path / "runs.json")  # where a regression would write
    code = train_all.main(["--quick", "--stages", "01", "--checkpoints", str(tmp_path), "--", *TINY_EXTRA])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "the record is unchanged" in out and "| 01 | the bigram model" in out  # the table is printed instead
    assert [p.read_bytes() for p in kept] == before and not (tmp_path / "runs.json").exists()
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))[0]["val_loss"] == 2.6


# -- benchmarks/tune_stage10.py ----------------------------------------------------------------------


class StageProcess:
    """Stands in for a candidate's `python stages/10_gpt.py` process: prints what the stage prints at each
    loss estimate (the stage's own command line is tested with the stages)."""

    commands: list[list[str]] = []

    def __init__(self, cmd, cwd=None, stdout=None, stderr=None, env=None):
        StageProcess.commands.append(cmd)
        args = dict(zip(cmd[2::2], cmd[3::2], strict=False))
        steps, every = int(args["--max_iters"]), int(args["--eval_interval"])
        for step in [*range(0, steps - 1, every), steps - 1]:
            stdout.write(f"step {step}: train loss {3 - step / 10:.4f}, val loss {3.1 - step / 10:.4f}\n")
        stdout.flush()

    def wait(self) -> int:
        return 0


def test_tune_stage10_runs_a_candidate_as_the_stage_and_records_its_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    import tune_stage10

    monkeypatch.setattr(tune_stage10.subprocess, "Popen", StageProcess)
    out_json = tmp_path / "results.json"
    extra = "--max_iters 3 --eval_interval 2 --eval_iters 1 --batch_size 2"
    argv = ["tune_stage10.py", "curves", "w128-l4", "--jobs", "1", "--extra", extra, "--out", str(out_json)]
    monkeypatch.setattr(sys, "argv", argv)
    assert tune_stage10.main() == 0  # the candidate runs as its own process, as the stage a user types
    out = capsys.readouterr().out
    assert "w128-l4: python stages/10_gpt.py --preset cpu --device cpu --n_embd 128" in out
    assert StageProcess.commands[-1][1] == "stages/10_gpt.py" and "--n_embd" in StageProcess.commands[-1]
    assert "w128-l4: 0: 3.1000, 2: 2.9000" in out  # the val loss at each estimate
    (entry,) = json.loads(out_json.read_text(encoding="utf-8"))["results"]
    assert entry["figure"] == "stage10 cpu candidate w128-l4" and [row[0] for row in entry["curve"]] == [0, 2]
    assert entry["sizes"]["dropout"] > 0 and "--dropout" in entry["flags"]  # the lecture's recipe: dropout on
    # the step time, measured apart, joins the same entry and keeps its curve
    monkeypatch.setattr(
        sys, "argv", ["tune_stage10.py", "throughput", "w128-l4", "--steps", "1", "--out", str(out_json)]
    )
    monkeypatch.setitem(tune_stage10.CANDIDATES["w128-l4"]["sizes"], "n_embd", 16)  # a tiny model: seconds
    monkeypatch.setitem(tune_stage10.CANDIDATES["w128-l4"]["sizes"], "n_layer", 1)
    assert tune_stage10.main() == 0
    (entry,) = json.loads(out_json.read_text(encoding="utf-8"))["results"]
    assert entry["ms_per_step"] > 0 and [row[0] for row in entry["curve"]] == [0, 2]


def test_tune_stage10_refuses_an_unknown_candidate(monkeypatch, capsys):
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    import tune_stage10

    monkeypatch.setattr(sys, "argv", ["tune_stage10.py", "curves", "chosn"])
    with pytest.raises(SystemExit) as stopped:
        tune_stage10.main()
    assert stopped.value.code == 2
    assert "unknown: chosn; choose from all, w128-l4" in capsys.readouterr().err


# -- dropout.py ------------------------------------------------------------------------------------


def test_dropout_runs_without_dropout_then_at_the_cpu_presets_rate(small_text_file, tmp_path, monkeypatch, capsys):
    """Stage 10's page shows the cpu preset with and without its dropout: the run with it takes the preset's
    rate, not the Config's 0.2 (the video preset's). The preset is made tiny here, with a rate of its own."""
    stage = load_stage("10")
    rate = 0.35  # neither the Config's 0.2 nor the real preset's 0.1: only the preset says it
    tiny = dict(batch_size=4, block_size=8, eval_iters=1, n_embd=16, n_head=2, n_layer=1, dropout=rate)
    monkeypatch.setitem(stage.PRESETS, "cpu", {**stage.PRESETS["cpu"], **tiny})
    built = []  # the rates of each model the tool trains, read from its dropout layers
    init = stage.LanguageModel.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append({m.p for m in self.modules() if isinstance(m, torch.nn.Dropout)})

    monkeypatch.setattr(stage.LanguageModel, "__init__", recording)
    monkeypatch.setattr(stage.LanguageModel, "generate", lambda self, idx, *args, **kwargs: idx)  # no closing sample
    monkeypatch.setattr(tools.stages, "load_stage", lambda name: stage)
    argv = ["--data", str(small_text_file), "--chars", "5000", "--max_iters", "2", "--out", str(tmp_path / "d")]
    code = dropout.main([*argv, "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert built == [{0.0}, {rate}]


# -- benchmarks/bench.py ------------------------------------------------------------------------------


def test_bench_keeps_the_figures_a_run_with_only_did_not_measure(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    out = tmp_path / "results.json"
    assert bench.merged(out, [{"figure": "speed 01", "v": 1}]) == [{"figure": "speed 01", "v": 1}]  # no file yet
    out.write_text(json.dumps({"results": [{"figure": "speed 01", "v": 0}, {"figure": "test suite", "v": 2}]}))
    assert bench.merged(out, [{"figure": "speed 01", "v": 1}, {"figure": "gflops", "v": 3}]) == [
        {"figure": "speed 01", "v": 1},  # replaced in place
        {"figure": "test suite", "v": 2},  # kept
        {"figure": "gflops", "v": 3},  # added
    ]
    out.write_text("not json")
    assert bench.merged(out, [{"figure": "gflops", "v": 3}]) == [{"figure": "gflops", "v": 3}]


def test_bench_gpu_figure_reads_its_times_from_the_stage_run():
    """The GPU figure is measured by hand on a rented GPU, where a crash wastes it: its flags are stage 10's
    own, and its times come from the run's history (the first interval compiles)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    stage = load_stage("10")
    args = harness.cli.build_parser("10_gpt", stage.__doc__, stage.Config, stage.PRESETS).parse_args(bench.GPU_FLAGS)
    assert (args.preset, args.compile, args.dtype) == ("video", "reduce-overhead", "bfloat16")
    rows = [{"step": s, "elapsed_s": t} for s, t in [(0, 1.0), (500, 61.0), (1000, 66.0), (1500, 71.0), (1999, 76.0)]]
    out = "step 1999: train loss 1.1000, val loss 1.4800\n"
    row = bench.gpu_figure(rows, out, 80.0, bench.GPU_FLAGS, "cuda", "NVIDIA H100")
    assert row["ms_per_step"] == 10.0 and row["compile_s"] == 56.0  # 61 s to step 500, 10 ms a step after it
    assert (row["val"], row["wall_s"], row["met"]) == (1.48, 80.0, True)
