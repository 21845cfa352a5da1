"""The ``config-autoscaler`` ConfigMap: Knative's keys, defaults and validation (reference §1.7).

Pure: no I/O, no clock. :meth:`AutoscalerConfig.from_data` turns the ConfigMap's ``data`` into a
frozen :class:`AutoscalerConfig`, or raises one :class:`ConfigError` that lists every invalid key,
so an invalid ConfigMap is rejected whole (the caller keeps the last valid config in force).

Keys Knative does not know are ignored, as Knative ignores them; :func:`unknown_keys` reports them
so the caller can log a warning (``_example``, the documentation block, is never reported).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cluster.annotations import (
    KPA_CLASS,
    PANIC_WINDOW_PERCENTAGE_MAX,
    PANIC_WINDOW_PERCENTAGE_MIN,
    TARGET_MIN,
)
from cluster.goparse import (
    HOUR,
    SECOND,
    format_number,
    parse_bool,
    parse_duration,
    parse_float,
    parse_int32,
)

EXAMPLE_KEY: Final = "_example"


class ConfigError(ValueError):
    """``config-autoscaler`` is invalid. ``errors`` has one message per bad key, each starting
    with the key and echoing the value and the allowed range:
    ``stable-window = 3s: must be within [6s, 1h]``. ``str()`` joins them with ``; ``.
    """

    def __init__(self, errors: tuple[str, ...]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalerConfig:
    """The autoscaler's cluster-wide settings. Per-revision annotations override some of them
    (``autoscaler.resolve``). Seconds end in ``_s``; ratios are plain floats (0.7 = 70 %).
    """

    container_concurrency_target_fraction: float = 0.7
    """``container-concurrency-target-percentage``: the share of the concurrency total the
    autoscaler aims at (0.7: 70 %). Written as a percentage (70) or, for legacy reasons, as a
    fraction in (0, 1]; a value > 1 is divided by 100."""

    container_concurrency_target_default: float = 100.0
    """``container-concurrency-target-default``: concurrent requests per pod aimed at (before the
    target percentage) when the revision's containerConcurrency is 0 (unlimited)."""

    target_utilization: float = 0.7
    """The target fraction for the rps metric. Not a ConfigMap key (Knative hard-codes it); only
    the ``target-utilization-percentage`` annotation overrides it."""

    rps_target_default: float = 200.0
    """``requests-per-second-target-default``: requests per second per pod (before the 0.7
    utilisation) for revisions that scale on the rps metric."""

    target_burst_capacity: float = 211.0
    """``target-burst-capacity``: spare concurrent requests the revision should absorb without
    queueing; -1 = unlimited, 0 = none. zeroserve's activator stays in the path either way."""

    stable_window_s: float = 60.0
    """``stable-window``: seconds of history averaged in stable mode, and how long a revision
    must see no traffic before it scales to zero. Whole seconds in [6 s, 1 h]."""

    panic_window_percentage: float = 10.0
    """``panic-window-percentage``: the panic window as a percentage of the stable window
    (10 → 6 s of a 60 s window)."""

    panic_threshold_percentage: float = 200.0
    """``panic-threshold-percentage``: the panic-window load, as a percentage of the current
    capacity, at which the autoscaler enters panic mode (200 = twice the capacity)."""

    max_scale_up_rate: float = 1000.0
    """``max-scale-up-rate``: one decision may multiply the ready pods by at most this."""

    max_scale_down_rate: float = 2.0
    """``max-scale-down-rate``: one decision may divide the ready pods by at most this."""

    enable_scale_to_zero: bool = True
    """``enable-scale-to-zero``: whether revisions with no traffic scale to zero (else to 1)."""

    scale_to_zero_grace_period_s: float = 30.0
    """``scale-to-zero-grace-period``: seconds the last pod stays up after the activator is in
    the path, before scaling to zero."""

    scale_to_zero_pod_retention_period_s: float = 0.0
    """``scale-to-zero-pod-retention-period``: seconds the last pod is kept after the autoscaler
    decided to scale to zero."""

    scale_down_delay_s: float = 0.0
    """``scale-down-delay``: seconds a lower decision must hold before it is applied (the
    maximum over this window is used). Whole seconds."""

    pod_autoscaler_class: str = KPA_CLASS
    """``pod-autoscaler-class``: the default autoscaler class. zeroserve implements the KPA."""

    activator_capacity: float = 100.0
    """``activator-capacity``: concurrent requests one activator can carry, which sets how
    many activators a revision is spread over."""

    initial_scale: int = 1
    """``initial-scale``: pods a new revision starts with. 0 only with
    ``allow-zero-initial-scale``."""

    allow_zero_initial_scale: bool = False
    """``allow-zero-initial-scale``: whether ``initial-scale`` (key or annotation) may be 0."""

    min_scale: int = 0
    """``min-scale``: the default smallest number of pods of a reachable revision."""

    max_scale: int = 0
    """``max-scale``: the default largest number of pods; 0 = unbounded."""

    max_scale_limit: int = 0
    """``max-scale-limit``: the largest max-scale (key or annotation) allowed; 0 = no limit.
    When set, max-scale must be within [1, max-scale-limit]."""

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> AutoscalerConfig:
        """Build the config from a ConfigMap's ``data``; absent keys keep their defaults.

        Raises :class:`ConfigError` listing every invalid key (syntax, range, and the rules
        between keys). Unknown keys are ignored (see :func:`unknown_keys`).
        """
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key, field_name, parser in _ROWS:
            raw = data.get(key)
            if raw is None:
                continue
            try:
                values[field_name] = parser(raw)
            except ValueError as exc:
                errors[key] = f"{key} = {raw}: {exc}"
        cfg = cls(**values)
        for key, problem in _cross_checks(cfg):
            # A key whose own value is bad is reported once, for its own problem.
            errors.setdefault(key, f"{key} = {data.get(key, _default_text(key))}: {problem}")
        if errors:
            order = {key: i for i, (key, _, _) in enumerate(_ROWS)}
            raise ConfigError(tuple(errors[k] for k in sorted(errors, key=order.__getitem__)))
        return cfg


# -- parsers: text → value, or ValueError("must be …") ------------------------------------------

Parser = Callable[[str], Any]


def _float_parser(
    *,
    lo: float | None = None,
    lo_open: bool = False,
    also: float | None = None,
    hi: float | None = None,
    describe: str = "",
) -> Parser:
    """A ParseFloat parser with a range: ``lo`` (exclusive if ``lo_open``), ``hi``, or ``also``."""

    def parse(text: str) -> float:
        value = parse_float(text)
        ok = True
        if lo is not None:
            ok = value > lo if lo_open else value >= lo
        if hi is not None:
            ok = ok and value <= hi
        if not ok and value != also:
            raise ValueError(describe)
        return value

    return parse


def _int_parser(*, lo: int, describe: str) -> Parser:
    def parse(text: str) -> int:
        value = parse_int32(text)
        if value < lo:
            raise ValueError(describe)
        return value

    return parse


def _duration_parser(
    *,
    lo_ns: int,
    lo_open: bool = False,
    hi_ns: int | None = None,
    whole: bool = False,
    describe: str,
) -> Parser:
    """A Go-duration parser to float seconds, with a range and optional whole-seconds rule."""

    def parse(text: str) -> float:
        ns = parse_duration(text)
        ok = ns > lo_ns if lo_open else ns >= lo_ns
        if hi_ns is not None:
            ok = ok and ns <= hi_ns
        if not ok:
            raise ValueError(describe)
        if whole and ns % SECOND:
            raise ValueError("must be whole seconds")
        return ns / SECOND

    return parse


def _target_fraction(text: str) -> float:
    # Legacy: (0, 1] is a fraction, > 1 a percentage. "55" → 0.55, "0.71" → 0.71, "1" → 1.0.
    value = parse_float(text)
    if value > 1.0:
        value /= 100.0
    if not 0.0 < value <= 1.0:
        raise ValueError("must be within (0, 100] (a percentage, or a fraction within (0, 1])")
    return value


def _string(text: str) -> str:
    return text


_ROWS: tuple[tuple[str, str, Parser], ...] = (
    (
        "container-concurrency-target-percentage",
        "container_concurrency_target_fraction",
        _target_fraction,
    ),
    (
        "container-concurrency-target-default",
        "container_concurrency_target_default",
        _float_parser(),
    ),
    (
        "requests-per-second-target-default",
        "rps_target_default",
        _float_parser(lo=TARGET_MIN, describe=f"must be at least {TARGET_MIN}"),
    ),
    (
        "target-burst-capacity",
        "target_burst_capacity",
        _float_parser(lo=0, also=-1, describe="must be at least 0, or -1 (unlimited)"),
    ),
    (
        "stable-window",
        "stable_window_s",
        _duration_parser(
            lo_ns=6 * SECOND, hi_ns=HOUR, whole=True, describe="must be within [6s, 1h]"
        ),
    ),
    (
        "panic-window-percentage",
        "panic_window_percentage",
        _float_parser(
            lo=PANIC_WINDOW_PERCENTAGE_MIN,
            hi=PANIC_WINDOW_PERCENTAGE_MAX,
            describe="must be within [1, 100]",
        ),
    ),
    # Knative does not validate it here (only the annotation has a range, [110, 1000]).
    ("panic-threshold-percentage", "panic_threshold_percentage", _float_parser()),
    (
        "max-scale-up-rate",
        "max_scale_up_rate",
        _float_parser(lo=1.0, lo_open=True, describe="must be greater than 1"),
    ),
    (
        "max-scale-down-rate",
        "max_scale_down_rate",
        _float_parser(lo=1.0, lo_open=True, describe="must be greater than 1"),
    ),
    ("enable-scale-to-zero", "enable_scale_to_zero", parse_bool),
    (
        "scale-to-zero-grace-period",
        "scale_to_zero_grace_period_s",
        _duration_parser(lo_ns=0, lo_open=True, describe="must be greater than 0s"),
    ),
    (
        "scale-to-zero-pod-retention-period",
        "scale_to_zero_pod_retention_period_s",
        _duration_parser(lo_ns=0, describe="must be at least 0s"),
    ),
    (
        "scale-down-delay",
        "scale_down_delay_s",
        _duration_parser(lo_ns=0, whole=True, describe="must be at least 0s"),
    ),
    ("pod-autoscaler-class", "pod_autoscaler_class", _string),
    (
        "activator-capacity",
        "activator_capacity",
        _float_parser(lo=1.0, describe="must be at least 1"),
    ),
    ("initial-scale", "initial_scale", _int_parser(lo=0, describe="must be at least 0")),
    ("allow-zero-initial-scale", "allow_zero_initial_scale", parse_bool),
    ("min-scale", "min_scale", _int_parser(lo=0, describe="must be at least 0")),
    ("max-scale", "max_scale", _int_parser(lo=0, describe="must be at least 0")),
    ("max-scale-limit", "max_scale_limit", _int_parser(lo=0, describe="must be at least 0")),
)

KEYS: Final[tuple[str, ...]] = tuple(key for key, _, _ in _ROWS)
"""Every ``config-autoscaler`` key, in table order."""

_FIELD_OF_KEY: Final = {key: field_name for key, field_name, _ in _ROWS}


def _cross_checks(cfg: AutoscalerConfig) -> list[tuple[str, str]]:
    """The rules between keys, as (key to blame, problem)."""
    problems: list[tuple[str, str]] = []
    target = cfg.container_concurrency_target_fraction * cfg.container_concurrency_target_default
    if target < TARGET_MIN:
        # "1" × default "0.001" → 0.001 concurrent requests: below TargetMin.
        problems.append(
            (
                "container-concurrency-target-percentage",
                f"times container-concurrency-target-default "
                f"({format_number(cfg.container_concurrency_target_default)}) gives a target of "
                f"{format_number(target)}, must be at least {TARGET_MIN}",
            )
        )
    if cfg.initial_scale == 0 and not cfg.allow_zero_initial_scale:
        problems.append(
            ("initial-scale", "must be at least 1 unless allow-zero-initial-scale is true")
        )
    if cfg.max_scale_limit > 0 and not 1 <= cfg.max_scale <= cfg.max_scale_limit:
        problems.append(
            (
                "max-scale",
                f"must be within [1, {cfg.max_scale_limit}] when max-scale-limit is {cfg.max_scale_limit}",
            )
        )
    if cfg.max_scale > 0 and cfg.min_scale > cfg.max_scale:
        problems.append(("min-scale", f"must be within [0, {cfg.max_scale}] (max-scale)"))
    return problems


def _default_text(key: str) -> str:
    value = getattr(DEFAULT, _FIELD_OF_KEY[key])
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def unknown_keys(data: Mapping[str, str]) -> tuple[str, ...]:
    """The keys of ``data`` that are not ``config-autoscaler`` keys, sorted (``_example`` excluded).

    Knative ignores them, and so does :meth:`AutoscalerConfig.from_data`; the caller logs them,
    since a misspelt key (``stable_window``) otherwise silently keeps its default.
    """
    return tuple(sorted(k for k in data if k not in _FIELD_OF_KEY and k != EXAMPLE_KEY))


DEFAULT: Final = AutoscalerConfig()
"""Knative's defaults, the config in force when the ConfigMap is empty."""
