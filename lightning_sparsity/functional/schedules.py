"""Sparsity schedules: how the target fraction of zeros grows from ``initial`` to ``target``."""

from __future__ import annotations

import math
from typing import Literal, get_args

ScheduleName = Literal["linear", "exp", "cos", "cubic", "cube"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


def scheduled_sparsity(progress: float, initial: float, target: float, schedule: ScheduleName = "linear") -> float:
    """Sparsity at ``progress`` in [0, 1] of the ramp; exactly ``initial`` at 0 and ``target`` at 1.

    - ``linear``: equal steps.
    - ``exp``: the density (fraction of non-zeros) shrinks geometrically, as INC's ``exp`` decay.
    - ``cos``: slow start, fast finish: ``1 - cos(p * pi / 2)``.
    - ``cubic``: fast start, slow finish (Zhu & Gupta, 2017): ``1 - (1 - p) ** 3``.
    - ``cube``: slow start, fast finish, as INC's ``cube`` decay: ``p ** 3``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    p = min(max(progress, 0.0), 1.0)
    if p >= 1.0:
        return target
    if schedule == "exp":
        density = (1.0 - initial) * ((1.0 - target) / (1.0 - initial)) ** p
        return min(1.0 - density, target)
    if schedule == "linear":
        fraction = p
    elif schedule == "cos":
        fraction = 1.0 - math.cos(p * math.pi / 2)
    elif schedule == "cube":
        fraction = p**3
    else:
        fraction = 1.0 - (1.0 - p) ** 3
    return initial + (target - initial) * fraction


def ramp_progress(now: int, start: int, end: int) -> float:
    """Fraction of the ramp ``[start, end]`` done at ``now`` (clamped to [0, 1])."""
    if end <= start:
        return 1.0 if now >= start else 0.0
    return min(max((now - start) / (end - start), 0.0), 1.0)


def is_update_point(now: int, start: int, end: int, frequency: int) -> bool:
    """Whether masks are recomputed at ``now``: every ``frequency`` from ``start``, and always at ``end``."""
    return start <= now <= end and ((now - start) % frequency == 0 or now == end)


def last_update_point(now: int, start: int, end: int, frequency: int) -> int | None:
    """The latest update point at or before ``now``, or None before ``start``."""
    if now < start:
        return None
    if now >= end:
        return end
    return start + (now - start) // frequency * frequency
