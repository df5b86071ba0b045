"""tools/doctor.py: each verdict is reached exactly when it should be, with stand-ins for devices
(the CPU posing as an accelerator; one that turns nan, one that differs, one that fails) and for a
compile that hangs or fails."""

import dataclasses
import sys

import torch

from tools import doctor

TINY = dict(n_embd=16, n_head=2, n_layer=1, block_size=8)


def reference() -> doctor.Results:
    return doctor.compute(torch.device("cpu"), **TINY)


def verdicts(findings) -> list[str]:
    return [f.verdict for f in findings]


def test_a_device_that_computes_what_the_cpu_computes_is_ok():
    findings = doctor.parity("cpu posing as an accelerator", reference, reference())
    assert verdicts(findings) == ["ok"] * 5, [f.text for f in findings]
    assert "the logits within 0.0e+00" in findings[0].text


def test_a_device_that_turns_nan_is_a_problem():
    def nan():
        r = reference()
        r.logits[0, 0, 0] = float("nan")
        return r

    (finding,) = doctor.parity("nan-device", nan, reference())
    assert finding.verdict == "PROBLEM" and "turns nan or inf" in finding.text and "--device cpu" in finding.text


def test_a_device_that_differs_beyond_the_tolerance_is_a_problem_in_what_differs():
    def off():
        r = reference()
        return dataclasses.replace(r, loss=r.loss + 3e-2, training=[v * 1.01 for v in r.training])

    found = doctor.parity("off-device", off, reference())

    def about(label):
        return next(f for f in found if f" {label} " in f.text)

    assert about("the logits").verdict == "ok" and about("the gradients").verdict == "ok"
    assert (
        about("the loss").verdict == "PROBLEM"
        and "differs from the CPU by 3.0e-02 in the loss" in about("the loss").text
    )
    assert about(f"the losses of {doctor.TRAIN_STEPS} training steps").verdict == "PROBLEM"


def test_a_device_that_raises_is_a_problem_in_one_line():
    def fails():
        raise RuntimeError("MPS backend does not support this op\nsecond line")

    (finding,) = doctor.parity("mps", fails, reference())
    assert (
        finding.verdict == "PROBLEM"
        and "mps fails to run stage 10's model (MPS backend does not support" in finding.text
    )


def test_a_sampler_that_draws_impossible_ids_is_a_problem():
    def bad_draws():
        r = reference()
        r.samples[0, 0] = 12  # probability 0
        return r

    findings = doctor.parity("mps", bad_draws, reference())
    assert findings[-1].verdict == "PROBLEM" and "drew ids of probability 0 ([12])" in findings[-1].text


def test_a_compile_that_hangs_or_fails_is_a_problem_and_one_that_works_is_ok():
    hangs = doctor.compile_smoke([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)
    assert hangs.verdict == "PROBLEM" and "did not finish in 0.2 s" in hangs.text
    fails = doctor.compile_smoke([sys.executable, "-c", "raise SystemExit('no Triton')"])
    assert fails.verdict == "PROBLEM" and "fails (no Triton)" in fails.text
    assert doctor.compile_smoke([sys.executable, "-c", "pass"]).verdict == "ok"


def test_the_doctor_exits_1_when_a_device_is_unusable_and_prints_the_report(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "accelerators", lambda: [torch.device("cpu")])  # the CPU posing as one
    real = doctor.compute
    monkeypatch.setattr(doctor, "compute", lambda device: real(device, **TINY))
    assert doctor.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "cpu computes what the CPU computes" in out and "to paste into a question:" in out
    assert out.rstrip().endswith("no problems found")

    def broken(device, calls=[]):  # noqa: B006 (the first call is the CPU's reference, the second the device)
        calls.append(device)
        r = real(device, **TINY)
        if len(calls) == 2:
            r.logits.fill_(float("nan"))
        return r

    monkeypatch.setattr(doctor, "compute", broken)
    assert doctor.main(["--quick"]) == 1
    assert capsys.readouterr().out.rstrip().endswith("1 problem(s)")
