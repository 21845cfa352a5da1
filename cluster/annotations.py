"""Per-revision ``autoscaling.knative.dev/*`` annotations: keys, legacy aliases and validation.

Pure, no I/O (reference §1.8, Knative's ``pkg/apis/autoscaling/annotation_validation.go``). It
lives in ``cluster`` so that the spec loader can reject a bad annotation when it reads a spec
file (``cluster`` may not import ``autoscaler``); ``autoscaler.resolve`` parses with it too.

Each annotation has a hyphenated key and possibly a legacy camelCase alias
(``autoscaling.knative.dev/minScale``). When both are present the hyphenated key wins and the
alias is ignored, as in Knative's ``kmap.KeyPriority``. Errors name the key actually written and
echo its value: ``autoscaling.knative.dev/window = 3s: must be within [6s, 1h]``.

zeroserve implements only the KPA, so ``metric`` and ``metric-aggregation-algorithm`` are
validated as for the KPA unless ``class`` names another autoscaler (Knative validates the
algorithm only when ``class`` is written and is the KPA; zeroserve treats an absent class as the
KPA, which is what it is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from cluster.goparse import (
    HOUR,
    SECOND,
    format_number,
    parse_duration,
    parse_float,
    parse_int32,
)

GROUP: Final = "autoscaling.knative.dev"
KPA_CLASS: Final = "kpa.autoscaling.knative.dev"
HPA_CLASS: Final = "hpa.autoscaling.knative.dev"
TARGET_MIN: Final = 0.01
WINDOW_MIN_NS: Final = 6 * SECOND
WINDOW_MAX_NS: Final = HOUR
PANIC_WINDOW_PERCENTAGE_MIN: Final = 1.0
PANIC_WINDOW_PERCENTAGE_MAX: Final = 100.0
PANIC_THRESHOLD_PERCENTAGE_MIN: Final = 110.0
PANIC_THRESHOLD_PERCENTAGE_MAX: Final = 1000.0

METRIC_CONCURRENCY: Final = "concurrency"
METRIC_RPS: Final = "rps"
ALGORITHM_LINEAR: Final = "linear"
ALGORITHM_WEIGHTED_EXPONENTIAL: Final = "weighted-exponential"
_ALGORITHMS: Final = {
    ALGORITHM_LINEAR: ALGORITHM_LINEAR,
    ALGORITHM_WEIGHTED_EXPONENTIAL: ALGORITHM_WEIGHTED_EXPONENTIAL,
    "weightedExponential": ALGORITHM_WEIGHTED_EXPONENTIAL,
}


@dataclass(frozen=True, slots=True)
class AnnotationKey:
    """One annotation: its hyphenated name and its legacy camelCase alias (``""`` if none)."""

    name: str
    legacy: str = ""

    @property
    def key(self) -> str:
        """The full hyphenated key, e.g. ``autoscaling.knative.dev/min-scale``."""
        return f"{GROUP}/{self.name}"

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key it may be written as, in priority order."""
        return (self.key, f"{GROUP}/{self.legacy}") if self.legacy else (self.key,)

    def get(self, annotations: Mapping[str, str]) -> tuple[str, str] | None:
        """The first of :attr:`keys` present, as ``(key, value)``; None if none is."""
        for key in self.keys:
            if key in annotations:
                return key, annotations[key]
        return None


CLASS: Final = AnnotationKey("class")
METRIC: Final = AnnotationKey("metric")
TARGET: Final = AnnotationKey("target")
TARGET_UTILIZATION_PERCENTAGE: Final = AnnotationKey(
    "target-utilization-percentage", "targetUtilizationPercentage"
)
TARGET_BURST_CAPACITY: Final = AnnotationKey("target-burst-capacity", "targetBurstCapacity")
WINDOW: Final = AnnotationKey("window")
PANIC_WINDOW_PERCENTAGE: Final = AnnotationKey("panic-window-percentage", "panicWindowPercentage")
PANIC_THRESHOLD_PERCENTAGE: Final = AnnotationKey(
    "panic-threshold-percentage", "panicThresholdPercentage"
)
MIN_SCALE: Final = AnnotationKey("min-scale", "minScale")
MAX_SCALE: Final = AnnotationKey("max-scale", "maxScale")
INITIAL_SCALE: Final = AnnotationKey("initial-scale", "initialScale")
ACTIVATION_SCALE: Final = AnnotationKey("activation-scale")
SCALE_DOWN_DELAY: Final = AnnotationKey("scale-down-delay", "scaleDownDelay")
SCALE_TO_ZERO_POD_RETENTION_PERIOD: Final = AnnotationKey(
    "scale-to-zero-pod-retention-period", "scaleToZeroPodRetentionPeriod"
)
METRIC_AGGREGATION_ALGORITHM: Final = AnnotationKey(
    "metric-aggregation-algorithm", "metricAggregationAlgorithm"
)

ANNOTATIONS: Final[tuple[AnnotationKey, ...]] = (
    CLASS,
    METRIC,
    TARGET,
    TARGET_UTILIZATION_PERCENTAGE,
    TARGET_BURST_CAPACITY,
    WINDOW,
    PANIC_WINDOW_PERCENTAGE,
    PANIC_THRESHOLD_PERCENTAGE,
    MIN_SCALE,
    MAX_SCALE,
    INITIAL_SCALE,
    ACTIVATION_SCALE,
    SCALE_DOWN_DELAY,
    SCALE_TO_ZERO_POD_RETENTION_PERIOD,
    METRIC_AGGREGATION_ALGORITHM,
)
"""Every ``autoscaling.knative.dev/*`` annotation zeroserve reads (reference §1.8)."""


class AnnotationError(ValueError):
    """Some autoscaling annotations are invalid. ``errors`` has one message per bad annotation,
    each starting with the key as written and echoing its value; ``str()`` joins them with ``; ``.
    """

    def __init__(self, errors: tuple[str, ...]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def unknown_keys(values: Mapping[str, str], group: str, known: tuple[str, ...]) -> list[str]:
    """One error for each key of ``group`` (``group/…``) in ``values`` that is not ``known``: a
    misspelt annotation would otherwise silently do nothing."""
    return [
        f"{key}: unknown key (known: {', '.join(known)})"
        for key in values
        if key.startswith(group + "/") and key not in known
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalingAnnotations:
    """The parsed annotations of one revision; None where the annotation is absent.

    Seconds end in ``_s``; percentages stay percentages (as written). ``metric`` and
    ``autoscaler_class`` are as written; ``metric_aggregation_algorithm`` is normalised
    (``weightedExponential`` → ``weighted-exponential``).
    """

    autoscaler_class: str | None = None
    metric: str | None = None
    target: float | None = None
    target_utilization_percentage: float | None = None
    target_burst_capacity: float | None = None
    window_s: float | None = None
    panic_window_percentage: float | None = None
    panic_threshold_percentage: float | None = None
    min_scale: int | None = None
    max_scale: int | None = None
    initial_scale: int | None = None
    activation_scale: int | None = None
    scale_down_delay_s: float | None = None
    scale_to_zero_pod_retention_period_s: float | None = None
    metric_aggregation_algorithm: str | None = None


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, value: str, problem: str) -> None:
        self.items.append(f"{key} = {value}: {problem}")


_T = TypeVar("_T")


def _parsed(
    ann: Mapping[str, str], which: AnnotationKey, errs: _Errors, parse: Callable[[str], _T]
) -> tuple[str, str, _T] | None:
    """The annotation's (key, raw value, parsed value); None if absent or (an error) unparsable."""
    found = which.get(ann)
    if found is None:
        return None
    key, raw = found
    try:
        return key, raw, parse(raw)
    except ValueError as exc:
        errs.add(key, raw, str(exc))
        return None


def _float(
    ann: Mapping[str, str],
    which: AnnotationKey,
    errs: _Errors,
    *,
    lo: float,
    hi: float | None = None,
    also: float | None = None,
    describe: str,
) -> float | None:
    got = _parsed(ann, which, errs, parse_float)
    if got is None:
        return None
    key, raw, value = got
    if (value < lo or (hi is not None and value > hi)) and value != also:
        errs.add(key, raw, describe)
        return None
    return value


def _int_ge0(ann: Mapping[str, str], which: AnnotationKey, errs: _Errors) -> tuple[str, int] | None:
    got = _parsed(ann, which, errs, parse_int32)
    if got is None:
        return None
    key, raw, value = got
    if value < 0:
        errs.add(key, raw, "must be at least 0")
        return None
    return key, value


def _duration(
    ann: Mapping[str, str],
    which: AnnotationKey,
    errs: _Errors,
    *,
    lo_ns: int,
    hi_ns: int,
    describe: str,
    whole: bool,
) -> float | None:
    got = _parsed(ann, which, errs, parse_duration)
    if got is None:
        return None
    key, raw, ns = got
    if not lo_ns <= ns <= hi_ns:
        errs.add(key, raw, describe)
        return None
    if whole and ns % SECOND:
        errs.add(key, raw, "must be whole seconds")
        return None
    return ns / SECOND


def parse_annotations(
    annotations: Mapping[str, str],
    *,
    max_scale_limit: int = 0,
    allow_zero_initial_scale: bool = False,
) -> AutoscalingAnnotations:
    """Parse and validate a revision's autoscaling annotations (reference §1.8).

    ``max_scale_limit`` and ``allow_zero_initial_scale`` are the config-autoscaler values the
    rules depend on (Knative's defaults: 0 and false). Other annotations are ignored. Raises
    :class:`AnnotationError` listing every invalid annotation.
    """
    errs = _Errors()
    ann = annotations

    autoscaler_class: str | None = None
    if (found := CLASS.get(ann)) is not None:
        key, autoscaler_class = found
        if autoscaler_class.endswith(".knative.dev") and autoscaler_class not in (
            KPA_CLASS,
            HPA_CLASS,
        ):
            errs.add(key, autoscaler_class, f"must be {KPA_CLASS} or {HPA_CLASS}")
    is_kpa = autoscaler_class in (None, KPA_CLASS)

    metric: str | None = None
    if (found := METRIC.get(ann)) is not None:
        key, metric = found
        if is_kpa and metric not in (METRIC_CONCURRENCY, METRIC_RPS):
            errs.add(key, metric, f"must be {METRIC_CONCURRENCY} or {METRIC_RPS}")
        elif autoscaler_class == HPA_CLASS and not metric:
            errs.add(key, metric, "must not be empty")

    algorithm: str | None = None
    if (found := METRIC_AGGREGATION_ALGORITHM.get(ann)) is not None:
        key, raw = found
        algorithm = _ALGORITHMS.get(raw, raw)
        if is_kpa and raw not in _ALGORITHMS:
            errs.add(key, raw, f"must be {ALGORITHM_LINEAR} or {ALGORITHM_WEIGHTED_EXPONENTIAL}")

    target = _float(ann, TARGET, errs, lo=TARGET_MIN, describe=f"must be at least {TARGET_MIN}")
    utilization = _float(
        ann,
        TARGET_UTILIZATION_PERCENTAGE,
        errs,
        lo=1.0,
        hi=100.0,
        describe="must be within [1, 100]",
    )
    tbc = _float(
        ann,
        TARGET_BURST_CAPACITY,
        errs,
        lo=0.0,
        also=-1.0,
        describe="must be at least 0, or -1 (unlimited)",
    )
    panic_window_pct = _float(
        ann,
        PANIC_WINDOW_PERCENTAGE,
        errs,
        lo=PANIC_WINDOW_PERCENTAGE_MIN,
        hi=PANIC_WINDOW_PERCENTAGE_MAX,
        describe=f"must be within [{format_number(PANIC_WINDOW_PERCENTAGE_MIN)}, "
        f"{format_number(PANIC_WINDOW_PERCENTAGE_MAX)}]",
    )
    panic_threshold_pct = _float(
        ann,
        PANIC_THRESHOLD_PERCENTAGE,
        errs,
        lo=PANIC_THRESHOLD_PERCENTAGE_MIN,
        hi=PANIC_THRESHOLD_PERCENTAGE_MAX,
        describe=f"must be within [{format_number(PANIC_THRESHOLD_PERCENTAGE_MIN)}, "
        f"{format_number(PANIC_THRESHOLD_PERCENTAGE_MAX)}]",
    )
    window_s = _duration(
        ann,
        WINDOW,
        errs,
        lo_ns=WINDOW_MIN_NS,
        hi_ns=WINDOW_MAX_NS,
        describe="must be within [6s, 1h]",
        whole=True,
    )
    scale_down_delay_s = _duration(
        ann,
        SCALE_DOWN_DELAY,
        errs,
        lo_ns=0,
        hi_ns=HOUR,
        describe="must be within [0s, 1h]",
        whole=True,
    )
    retention_s = _duration(
        ann,
        SCALE_TO_ZERO_POD_RETENTION_PERIOD,
        errs,
        lo_ns=0,
        hi_ns=HOUR,
        describe="must be within [0s, 1h]",
        whole=False,
    )

    # min/max: each an int ≥ 0; max (unless 0 = unbounded) ≥ min; with a limit, max in [1, limit].
    min_found = _int_ge0(ann, MIN_SCALE, errs)
    max_found = _int_ge0(ann, MAX_SCALE, errs)
    min_scale = min_found[1] if min_found else None
    max_scale = max_found[1] if max_found else None
    lo_min = min_scale or 0
    if max_found is not None:
        max_key, max_value = max_found
        if max_value != 0 and max_value < lo_min:
            errs.add(
                max_key, str(max_value), f"must be at least min-scale ({lo_min}), or 0 (unbounded)"
            )
        elif max_scale_limit > 0 and not 1 <= max_value <= max_scale_limit:
            errs.add(
                max_key,
                str(max_value),
                f"must be within [1, {max_scale_limit}] (max-scale-limit is {max_scale_limit})",
            )

    # activation-scale: an int ≥ 2 within [min-scale, max-scale] (of the annotations).
    activation_scale: int | None = None
    if (found := ACTIVATION_SCALE.get(ann)) is not None:
        key, raw = found
        try:
            activation_scale = parse_int32(raw)
        except ValueError as exc:
            errs.add(key, raw, str(exc))
        else:
            lo = max(2, lo_min)
            hi = max_scale or 0
            if activation_scale < lo or (hi and activation_scale > hi):
                rng = f"within [{lo}, {hi}]" if hi else f"at least {lo}"
                errs.add(key, raw, f"must be {rng} (at least 2, and within min-scale..max-scale)")
                activation_scale = None

    initial_scale: int | None = None
    if (found := INITIAL_SCALE.get(ann)) is not None:
        key, raw = found
        try:
            initial_scale = parse_int32(raw)
        except ValueError as exc:
            errs.add(key, raw, str(exc))
        else:
            if initial_scale < 0:
                errs.add(key, raw, "must be at least 0")
                initial_scale = None
            elif initial_scale == 0 and not allow_zero_initial_scale:
                errs.add(key, raw, "must be at least 1 unless allow-zero-initial-scale is true")
                initial_scale = None

    if errs.items:
        raise AnnotationError(tuple(errs.items))
    return AutoscalingAnnotations(
        autoscaler_class=autoscaler_class,
        metric=metric,
        target=target,
        target_utilization_percentage=utilization,
        target_burst_capacity=tbc,
        window_s=window_s,
        panic_window_percentage=panic_window_pct,
        panic_threshold_percentage=panic_threshold_pct,
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial_scale,
        activation_scale=activation_scale,
        scale_down_delay_s=scale_down_delay_s,
        scale_to_zero_pod_retention_period_s=retention_s,
        metric_aggregation_algorithm=algorithm,
    )


def validate_annotations(
    annotations: Mapping[str, str],
    *,
    max_scale_limit: int = 0,
    allow_zero_initial_scale: bool = False,
) -> None:
    """Raise :class:`AnnotationError` if an autoscaling annotation is invalid (Knative's webhook).

    The two keywords are the config-autoscaler values the rules depend on.
    """
    parse_annotations(
        annotations,
        max_scale_limit=max_scale_limit,
        allow_zero_initial_scale=allow_zero_initial_scale,
    )
