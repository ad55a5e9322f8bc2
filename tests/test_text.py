"""portwatch.model.text.iso_time: the text datetime gives, with or without importing it."""

from __future__ import annotations

import datetime
import math
import random

import pytest

from portwatch.model.text import iso_time


def _datetime_text(ts: float, timespec: str = "seconds") -> str:
    when = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def _outcome(fn: object, *args: object) -> str:
    try:
        return str(fn(*args))  # type: ignore[operator]
    except (ValueError, OverflowError, OSError) as exc:
        return type(exc).__name__


EDGES = [0, 0.0, 2.5e-7, 4.9999e-7, 5e-7, 0.9999995, 0.9999994999, 1.4999995, 1.9999995,
         1_764_650_000, 1_764_650_000.9999996, 253402300799, 253402300799.4, 253402300800,
         -1, -0.4, -1.9999995, math.inf, -math.inf, math.nan, 1e20]


@pytest.mark.parametrize("ts", EDGES)
@pytest.mark.parametrize("timespec", ["seconds", "milliseconds"])
def test_edges_read_as_datetime_reads_them(ts: float, timespec: str) -> None:
    assert _outcome(iso_time, ts, timespec) == _outcome(_datetime_text, ts, timespec)


def test_many_times_read_as_datetime_reads_them() -> None:
    rng = random.Random(15)
    times = [rng.uniform(0, 253402300800) for _ in range(20000)]
    times += [rng.randint(0, 2**34) + rng.choice([0.9999995, 0.9999994, 0.4999995, 5e-7, 0.5])
              for _ in range(20000)]
    assert [iso_time(t) for t in times] == [_datetime_text(t) for t in times]
    assert iso_time(1_764_650_000) == "2025-12-02T04:33:20Z"
