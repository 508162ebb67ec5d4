"""One way to check a config value: errors name the full dotted key (``guidance.msd.kernel``).

Every section's ``validate(path)`` receives its dotted path from :func:`msd3d.config.validate` and
passes it to these helpers, so the message names the key the user must change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(key: str, value: Any, choices: Iterable[str]) -> None:
    """``key`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``low <= value <= high`` (``<`` where open); ``None`` leaves that side unbounded."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            span = ("greater than" if low_open else "at least") + f" {low:g}"
        else:
            span = ("less than" if high_open else "at most") + f" {high:g}"
        raise ValueError(f"{key} must be {span}, got {value!r}")


def join(path: str, key: str) -> str:
    """``join("guidance.msd", "kernel") == "guidance.msd.kernel"`` (``path`` may be empty)."""
    return f"{path}.{key}" if path else key
