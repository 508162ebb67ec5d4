"""Schedules over a run: one interpolation for every value that changes with the step.

The MSD bandwidth lambda, the annealed diffusion time t of SDS/SDI, the learning-rate decay and the
regulariser weights are all a :class:`Schedule`: a value moving from a start to an end along one of
:data:`SCHEDULE_KINDS` over a span of steps (``unit="steps"``), of the total step count
(``"fraction"``) or of the run done (``"run"``); :func:`anneal` is the schedule over the whole run.
Nothing here knows about guidance or rendering.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("constant", "linear", "log_linear", "cosine")
SCHEDULE_UNITS = ("steps", "fraction", "run")


def interpolate(start: float, end: float, frac: float, kind: str = "linear") -> float:
    """A value moving from ``start`` (frac=0) to ``end`` (frac=1) with the given shape."""
    frac = min(max(float(frac), 0.0), 1.0)
    if kind == "constant":
        return float(start)
    if kind == "linear":
        return start + (end - start) * frac
    if kind == "log_linear":
        if start <= 0 or end <= 0:
            raise ValueError("log_linear schedules need positive start and end")
        return math.exp(math.log(start) + (math.log(end) - math.log(start)) * frac)
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")


def run_fraction(step: int, total_steps: int) -> float:
    """Fraction of the run done at ``step``, in [0, 1] (1 at the last step, ``total_steps - 1``)."""
    return min(max(step / max(total_steps - 1, 1), 0.0), 1.0)


def anneal(start: float, end: float, step: int, total_steps: int, kind: str = "linear") -> float:
    """``start`` at step 0 moving to ``end`` at the last step of a ``total_steps`` run: the
    :class:`Schedule` over the whole run (the MSD bandwidth, SDS/SDI's annealed t, the lr decay)."""
    return Schedule(start=start, end=end, start_step=0.0, end_step=1.0, kind=kind, unit="run").value(step, total_steps)


@dataclass
class Schedule:
    """A value moving from ``start`` (at ``start_step`` and before) to ``end`` (at ``end_step`` and after).

    ``end=None`` keeps the value constant at ``start``. With ``unit="fraction"`` the two steps are
    fractions of the run's total steps. threestudio's ``lambda_orient: [0, 10, 1000, 5000]`` is
    ``Schedule(start=10, end=1000, start_step=0, end_step=5000)``.
    """

    start: float = 0.0
    """Value at ``start_step`` and before."""
    end: float | None = None
    """Value at ``end_step`` and after (null: constant at ``start``)."""
    start_step: float = 0
    """Where the ramp starts (a step, or a fraction of the run with unit=fraction)."""
    end_step: float = 0
    """Where the ramp ends."""
    kind: str = "linear"
    """"constant", "linear", "log_linear" or "cosine" (msd3d.schedules.interpolate)."""
    unit: str = "steps"
    """"steps" (start_step/end_step are step numbers), "fraction" (of the total steps) or "run" (of the run done:
    0 at the first step, 1 at the last)."""

    def validate(self, name: str = "weight") -> None:
        from msd3d.validation import check_choice

        check_choice(f"{name}.kind", self.kind, SCHEDULE_KINDS)
        check_choice(f"{name}.unit", self.unit, SCHEDULE_UNITS)
        if self.end is not None and self.end_step < self.start_step:
            raise ValueError(f"{name}.end_step must not be before {name}.start_step")
        if self.kind == "log_linear" and self.end is not None and (self.start <= 0 or self.end <= 0):
            raise ValueError(f"{name} needs positive start and end for a log_linear schedule")

    def value(self, step: int, total_steps: int | None = None) -> float:
        """The value at training ``step`` (``total_steps`` is needed for ``unit="fraction"``)."""
        if self.end is None:
            return float(self.start)
        start_step, end_step = float(self.start_step), float(self.end_step)
        if self.unit == "run":
            if total_steps is None:
                raise ValueError("a schedule over the run needs total_steps")
            if end_step <= start_step:
                return float(self.end if run_fraction(step, total_steps) >= end_step else self.start)
            frac = (run_fraction(step, total_steps) - start_step) / (end_step - start_step)
            return interpolate(float(self.start), float(self.end), frac, self.kind)
        if self.unit == "fraction":
            if total_steps is None:
                raise ValueError("a schedule in fractions of the run needs total_steps")
            start_step, end_step = start_step * total_steps, end_step * total_steps
        if end_step <= start_step:
            return float(self.end if step >= end_step else self.start)
        frac = (step - start_step) / (end_step - start_step)
        return interpolate(float(self.start), float(self.end), frac, self.kind)
