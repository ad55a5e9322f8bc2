"""Checks of plain values that every reader of portwatch's documents shares (config, state, alerts).

Standard library only, no I/O.
"""

from __future__ import annotations

import math


def finite_number(value: object) -> float | None:
    """``value`` as a finite float when it is an int or float (not a bool), else None.

    An int beyond a float's range (JSON and YAML allow any number of digits),
    NaN and the infinities give None; never raises.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def brief(value: object, limit: int = 60) -> str:
    """A short, safe ``repr`` of ``value`` for an error message (at most about ``limit`` characters).

    An int too long to print (Python refuses past 4300 digits) is described by
    its size instead; never raises.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
