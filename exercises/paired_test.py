"""The paired t-test that judges two sets of runs, seed by seed: its verdict in one phrase.

Used by exercises/compare.py (whose docstring explains the test), exercise 3's program and the pages.
"""

from __future__ import annotations

import math
import statistics

# Student's t at 95%, two-sided, by degrees of freedom; between two rows the smaller count's (larger) t
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
T_95 |= {12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
RESOLVE = 0.01  # the difference the table says how many seeds it takes to resolve


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), max(values) - min(values)


def t_95(dof: int) -> float:
    return T_95[max(d for d in T_95 if d <= dof)]


def paired_interval(base: list[float], other: list[float]) -> tuple[float, float]:
    """The mean of other - base, seed by seed, and the half-width of its 95% confidence interval."""
    differences = [o - b for b, o in zip(base, other, strict=True)]
    n = len(differences)
    return statistics.fmean(differences), t_95(n - 1) * statistics.stdev(differences) / math.sqrt(n)


def seeds_to_resolve(base: list[float], other: list[float]) -> int:
    """How many seeds the measured spread of the paired differences needs to resolve RESOLVE."""
    sd = statistics.stdev([o - b for b, o in zip(base, other, strict=True)])
    return next((n for n in range(2, 1000) if t_95(n - 1) * sd / math.sqrt(n) <= RESOLVE), 1000)


def verdict(base: list[float], other: list[float]) -> str:
    """The paired t-test of this module's docstring, in one phrase."""
    if len(base) < 2:
        return "one seed: no noise to weigh the difference against (use --seeds 3)"
    mean, half = paired_interval(base, other)
    interval = f"95% interval {mean - half:+.4f} to {mean + half:+.4f}"
    if mean + half < 0:
        return f"better: {-mean:.4f} lower ({interval})"
    if mean - half > 0:
        return f"worse: {mean:.4f} higher ({interval})"
    return f"no difference shown: {mean:+.4f} ({interval}, which holds 0)"
