"""Go's value syntax, as Knative parses ConfigMap keys and annotations: pure, no I/O.

Knative reads ``config-autoscaler`` and the ``autoscaling.knative.dev/*`` annotations with Go's
``strconv.ParseFloat``, ``strconv.ParseInt(s, 10, 32)``, ``strconv.ParseBool`` and
``time.ParseDuration`` (reference §1.7). These functions accept the same text, so Knative's YAML
parses unchanged. Each raises :class:`ValueError` with a short reason (no key: the caller knows
it and puts it first).

Durations are returned as integer **nanoseconds**, like Go's ``time.Duration``, so that
"whole seconds" checks are exact (``61984ms`` is not whole; ``1.5h`` is).

This lives in ``cluster`` (not ``autoscaler``) because both the spec loader (``cluster``) and the
autoscaler's config need it, and dependencies point from ``autoscaler`` to ``cluster`` only.
"""

from __future__ import annotations

import math
import re

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1

# Go's unitMap (time/format.go): "µs" is U+00B5 (micro sign), "μs" is U+03BC (Greek mu).
_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,
    "\u03bcs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
# One "<number><unit>" component: digits, optional fraction, unit letters (Go requires at least
# one digit on one side of the point).
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")
_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|infinity)", re.IGNORECASE)
_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


def parse_duration(text: str) -> int:
    """Parse Go duration syntax (``1m30s``, ``300ms``, ``1.5h``, ``-1m23s``, ``0``) to nanoseconds.

    >>> parse_duration("1m30s") // SECOND
    90
    """
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError("not a duration (e.g. 60s, 1m30s, 300ms)")
    total = 0
    pos = 0
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if m is None:
            raise ValueError("not a duration (e.g. 60s, 1m30s, 300ms)")
        whole, frac, unit_name = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise ValueError("not a duration (e.g. 60s, 1m30s, 300ms)")
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"unknown unit {unit_name!r} (use ns, us, ms, s, m, h)")
        value = int(whole or "0") * unit
        if frac:
            # Exact: the fraction's digits times the unit, truncated to whole nanoseconds.
            value += int(frac) * unit // 10 ** len(frac)
        total += value
        if total > _INT64_MAX:
            raise ValueError("duration out of range")
        pos = m.end()
    return -total if negative else total


def format_duration(ns: int) -> str:
    """Format nanoseconds the short way Knative's docs write durations: ``1h``, ``1m30s``, ``300ms``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns % SECOND:
        if ns % MILLISECOND == 0:
            return f"{sign}{ns // MILLISECOND}ms"
        return f"{sign}{ns}ns"
    secs = ns // SECOND
    hours, rest = divmod(secs, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{seconds}s" if seconds else "",
    ]
    return sign + "".join(parts)


def parse_float(text: str) -> float:
    """Parse like Go's ``strconv.ParseFloat(s, 64)``, except that NaN is refused.

    Go accepts ``NaN``, and every range check then passes (all comparisons with NaN are false);
    zeroserve refuses it instead. ``Inf`` is accepted, as in Go; a finite literal too large for a
    float64 is an error (Go's ``ErrRange``).
    """
    if _SPECIAL_FLOAT.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if not _DECIMAL_FLOAT.fullmatch(text):
        raise ValueError("not a number")
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def parse_int32(text: str) -> int:
    """Parse like Go's ``strconv.ParseInt(s, 10, 32)``: decimal, optional sign, 32-bit range."""
    if not _INT.fullmatch(text):
        raise ValueError("not an integer")
    value = int(text)
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"out of range [{INT32_MIN}, {INT32_MAX}]")
    return value


def parse_bool(text: str) -> bool:
    """Parse like Go's ``strconv.ParseBool``: 1/t/T/TRUE/true/True and 0/f/F/FALSE/false/False."""
    try:
        return _BOOLS[text]
    except KeyError:
        raise ValueError("not a bool (true or false)") from None


def format_number(value: float) -> str:
    """Format a float the way Go's ``%v`` does for round values: ``100``, ``0.7``, ``1e-05``."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)
