"""The checks of each exercise, one module an exercise, and what they are made of."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType


class Failed(Exception):  # noqa: N818 (a finding of a check, not an error of the checker)
    """A check's finding, in words a learner can act on."""


@dataclasses.dataclass
class Check:
    """One property of the learner's code: run(module) returns None (passed) or a line to report
    (passed, with figures), or raises Failed. needs: the checks that must pass before it can run."""

    name: str
    run: Callable[[ModuleType], str | None]
    needs: tuple[str, ...] = ()
