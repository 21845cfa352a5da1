"""Parsers of the values the components read from their environment and flags: pure, no I/O.

The queue-proxy's variables and the activator's limits share them (the two never import each
other). Each raises :class:`ValueError` with a short reason; the caller puts the variable's name
and value first: ``QUEUE_HEADER_TIMEOUT_SECONDS = '1m': must be a number of seconds``.
"""

from __future__ import annotations

import math


def integer(raw: str) -> int:
    """A decimal integer (surrounding blanks allowed)."""
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def non_negative_int(raw: str) -> int:
    """An integer >= 0."""
    value = integer(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def seconds(raw: str) -> float:
    """A finite number of seconds >= 0 (``1.5``; no unit)."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError("must be a finite number of seconds >= 0")
    return value
