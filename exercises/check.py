"""Check an exercise: python exercises/check.py N [--file PATH]; or your own stage: stage NN --file PATH

Loads exercise N's file (exercises/exN_<name>.py, or the copy --file names), or your own version of
stage NN (02 to 10; without --file, the project's own), and runs its checks in order. Each prints
one line: passed, or what is wrong in words to act on; a check that needs an earlier one says it
could not run. A syntax error or an exception in the learner's code is reported with its file and
line, never as a traceback of the checker. Exit status 0 only when every check passes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import harness  # noqa: E402
import harness.cli  # noqa: E402
from exercises.checks import Check, Failed, ex1, ex2, ex3, ex4, ex5, ex6, stage  # noqa: E402
from exercises.learner_stage import load_learner_file, raised  # noqa: E402

# number -> its checks module: NAME (the file's name) and checks()
EXERCISES = {1: ex1, 2: ex2, 3: ex3, 4: ex4, 5: ex5, 6: ex6}
EXERCISE_DIR = ROOT / "exercises"


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # "passed", "FAILED" or "not run"
    message: str = ""

    def line(self) -> str:
        return f"{self.status:>7}  {self.name}" + (f": {self.message}" if self.message else "")


def run_checks(
    checks: list[Check], module: ModuleType, path: Path, report: Callable[[Outcome], None] = lambda o: None
) -> list[Outcome]:
    """Run each check on the learner's module, in order; report(outcome) as each one ends."""
    outcomes: dict[str, Outcome] = {}
    for check in checks:
        blocked = [n for n in check.needs if outcomes[n].status != "passed"]
        if blocked:
            outcomes[check.name] = Outcome(check.name, "not run", f"needs {', '.join(blocked)} to pass first")
            report(outcomes[check.name])
            continue
        try:
            figures = check.run(module)
            outcomes[check.name] = Outcome(check.name, "passed", figures or "")
        except Failed as e:
            outcomes[check.name] = Outcome(check.name, "FAILED", str(e))
        except NotImplementedError as e:
            outcomes[check.name] = Outcome(check.name, "FAILED", str(e) or "not written yet")
        except Exception as e:  # noqa: BLE001 (the learner's code raised: say what and where)
            outcomes[check.name] = Outcome(check.name, "FAILED", raised(e, path))
        report(outcomes[check.name])
    return list(outcomes.values())


def check_exercise(
    number: int, path: Path | None = None, report: Callable[[Outcome], None] = lambda o: None, **options
) -> list[Outcome]:
    """The outcomes of exercise number's checks on the file at path (default: the exercise's own);
    options go to the exercise's checks() (the tests make the speed check small)."""
    checks_module = EXERCISES[number]
    path = path or EXERCISE_DIR / f"{checks_module.NAME}.py"
    module = load_learner_file(path)
    return run_checks(checks_module.checks(**options), module, path, report)


def check_stage(
    number: int, path: Path, report: Callable[[Outcome], None] = lambda o: None, **options
) -> list[Outcome]:
    """The outcomes of stage number's checks on the learner's file at path; options go to stage.checks()."""
    module = load_learner_file(path, "give the path of your own stage with --file")
    return run_checks(stage.checks(number, **options), module, path, report)


def stage_number(text: str) -> int:
    if not text.isdigit() or int(text) not in stage.NUMBERS:
        raise harness.UserError(f"no stage {text!r} to check: give a number from 02 to 10, such as stage 04")
    return int(text)


def summary(outcomes: list[Outcome]) -> int:
    passed = sum(o.status == "passed" for o in outcomes)
    if passed == len(outcomes):
        print(f"all {passed} checks passed")
        return 0
    print(f"{passed} of {len(outcomes)} checks passed")
    return 1


def stage_main(argv: list[str]) -> int:
    parser = harness.cli.Parser(
        prog="python exercises/check.py stage", description="Check your own version of a stage, 02 to 10."
    )
    parser.add_argument("number", metavar="NN", help="the stage's number, 02 to 10")
    parser.add_argument("--file", type=Path, default=None, metavar="PATH", help="your file (default: the stage's own)")
    args = parser.parse_args(argv)
    number = stage_number(args.number)
    path = args.file or stage.reference(number).__file__
    print(f"stage {number:02d}: {path}")
    return summary(check_stage(number, Path(path), report=lambda outcome: print(outcome.line(), flush=True)))


def check_main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stage"]:
        return stage_main(argv[1:])
    parser = harness.cli.Parser(prog="python exercises/check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("exercise", type=int, choices=sorted(EXERCISES), help="the exercise's number")
    parser.add_argument("--file", type=Path, default=None, metavar="PATH", help="check this copy instead")
    args = parser.parse_args(argv)
    name = EXERCISES[args.exercise].NAME
    path = args.file or EXERCISE_DIR / f"{name}.py"
    print(f"exercise {args.exercise}: {path}")
    return summary(check_exercise(args.exercise, path, report=lambda outcome: print(outcome.line(), flush=True)))


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(check_main, argv)


if __name__ == "__main__":
    sys.exit(main())
