"""Resolving config + annotations into the decider's spec (reference §1.1, §1.6, §1.8)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from autoscaler.config import DEFAULT, AutoscalerConfig
from autoscaler.resolve import ResolvedRevision, ResolveError, panic_window_s, resolve
from autoscaler.scaling import BoundsSpec, DeciderSpec
from cluster.annotations import (
    ANNOTATIONS,
    AnnotationError,
    AutoscalingAnnotations,
    parse_annotations,
    validate_annotations,
)
from cluster.spec import Revision, RevisionKey

A = "autoscaling.knative.dev/"


def rev(cc: int = 0, **annotations: str) -> Revision:
    return Revision(
        namespace="default",
        service="iris",
        name="iris-v1",
        container_concurrency=cc,
        annotations={A + k.replace("_", "-"): v for k, v in annotations.items()},
    )


def rev_raw(annotations: dict[str, str], cc: int = 0) -> Revision:
    return Revision(
        namespace="default",
        service="iris",
        name="iris-v1",
        container_concurrency=cc,
        annotations=annotations,
    )


def test_defaults() -> None:
    got = resolve(DEFAULT, rev())
    assert got == ResolvedRevision(
        key=RevisionKey("default", "iris-v1"),
        decider=DeciderSpec(),
        bounds=BoundsSpec(),
        panic_window_s=6.0,
        metric="concurrency",
        aggregation="linear",
        container_concurrency=0,
    )


# (config, revision) → (total, target), reference §1.1.
TARGETS = [
    pytest.param(DEFAULT, rev(0), 100.0, 70.0, id="cc0-default-100-70"),
    pytest.param(DEFAULT, rev(10), 10.0, 7.0, id="cc10-10-7"),
    pytest.param(DEFAULT, rev(1), 1.0, 0.7, id="cc1-1-0.7"),
    pytest.param(DEFAULT, rev(0, metric="rps"), 200.0, 140.0, id="rps-200-140"),
    pytest.param(DEFAULT, rev(10, metric="rps"), 200.0, 140.0, id="rps-ignores-cc"),
    pytest.param(DEFAULT, rev(0, target="50"), 50.0, 35.0, id="target-annotation"),
    pytest.param(DEFAULT, rev(10, target="50"), 10.0, 7.0, id="target-annotation-capped-by-cc"),
    pytest.param(DEFAULT, rev(10, target="5"), 5.0, 3.5, id="target-annotation-below-cc"),
    pytest.param(
        DEFAULT, rev(10, target="50", metric="rps"), 50.0, 35.0, id="rps-target-not-capped-by-cc"
    ),
    pytest.param(
        DEFAULT,
        rev(0, target_utilization_percentage="50"),
        100.0,
        50.0,
        id="utilisation-annotation",
    ),
    pytest.param(
        DEFAULT,
        rev(0, metric="rps", target_utilization_percentage="100"),
        200.0,
        200.0,
        id="rps-utilisation",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, container_concurrency_target_fraction=0.5),
        rev(0),
        100.0,
        50.0,
        id="config-target-percentage",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, container_concurrency_target_fraction=0.5),
        rev(0, metric="rps"),
        200.0,
        140.0,
        id="config-percentage-not-used-for-rps",
    ),
    pytest.param(
        dataclasses.replace(
            DEFAULT, container_concurrency_target_default=20.0, rps_target_default=10.0
        ),
        rev(0),
        20.0,
        14.0,
        id="config-cc-default",
    ),
    pytest.param(
        DEFAULT,
        rev(0, target="0.01", target_utilization_percentage="1"),
        0.01,
        0.01,
        id="target-min",
    ),
]


@pytest.mark.parametrize(("config", "revision", "total", "target"), TARGETS)
def test_total_and_target(
    config: AutoscalerConfig, revision: Revision, total: float, target: float
) -> None:
    got = resolve(config, revision).decider
    assert got.total_value == pytest.approx(total)
    assert got.target_value == pytest.approx(target)


@pytest.mark.parametrize(
    ("stable", "pct", "panic"),
    [
        pytest.param(60.0, 10.0, 6.0, id="60s-10pct-6s"),
        pytest.param(6.0, 10.0, 1.0, id="6s-floored-at-1s"),
        pytest.param(30.0, 10.0, 3.0, id="30s-3s"),
        pytest.param(15.0, 10.0, 2.0, id="1.5s-rounds-half-away-from-zero"),
        pytest.param(25.0, 10.0, 3.0, id="2.5s-rounds-up-not-to-even"),
        pytest.param(60.0, 1.0, 1.0, id="0.6s-to-1s"),
        pytest.param(3600.0, 100.0, 3600.0, id="whole-window"),
        pytest.param(14.0, 10.0, 1.0, id="1.4s-rounds-down"),
    ],
)
def test_panic_window(stable: float, pct: float, panic: float) -> None:
    assert panic_window_s(stable, pct) == panic


@pytest.mark.parametrize(
    ("config", "revision", "stable", "panic"),
    [
        pytest.param(DEFAULT, rev(window="30s"), 30.0, 3.0, id="window-annotation"),
        pytest.param(DEFAULT, rev(window="6s"), 6.0, 1.0, id="window-6s"),
        pytest.param(
            DEFAULT, rev(panic_window_percentage="20"), 60.0, 12.0, id="panic-pct-annotation"
        ),
        pytest.param(
            dataclasses.replace(DEFAULT, stable_window_s=120.0, panic_window_percentage=5.0),
            rev(),
            120.0,
            6.0,
            id="config-window-and-pct",
        ),
    ],
)
def test_windows(config: AutoscalerConfig, revision: Revision, stable: float, panic: float) -> None:
    got = resolve(config, revision)
    assert (got.decider.stable_window_s, got.bounds.stable_window_s) == (stable, stable)
    assert (got.decider.panic_window_s, got.panic_window_s) == (panic, panic)


# Each row: config, revision, and the expected (decider, bounds) changes from the defaults.
OVERRIDES = [
    pytest.param(
        DEFAULT,
        rev(panic_threshold_percentage="300"),
        {"panic_threshold": 3.0},
        {},
        id="panic-threshold",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, panic_threshold_percentage=150.0),
        rev(),
        {"panic_threshold": 1.5},
        {},
        id="cfg-pt",
    ),
    pytest.param(
        DEFAULT,
        rev(target_burst_capacity="-1"),
        {"target_burst_capacity": -1.0},
        {},
        id="tbc-annotation",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, target_burst_capacity=0.0),
        rev(),
        {"target_burst_capacity": 0.0},
        {},
        id="tbc-cfg",
    ),
    pytest.param(
        DEFAULT, rev(activation_scale="3"), {"activation_scale": 3}, {}, id="activation-scale"
    ),
    pytest.param(
        DEFAULT,
        rev(scale_down_delay="5m"),
        {"scale_down_delay_s": 300.0},
        {},
        id="scale-down-delay",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, scale_down_delay_s=10.0),
        rev(),
        {"scale_down_delay_s": 10.0},
        {},
        id="delay-cfg",
    ),
    pytest.param(
        DEFAULT,
        rev(scale_to_zero_pod_retention_period="1m30s"),
        {},
        {"scale_to_zero_pod_retention_s": 90.0},
        id="retention",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, scale_to_zero_pod_retention_period_s=5.0),
        rev(),
        {},
        {"scale_to_zero_pod_retention_s": 5.0},
        id="retention-cfg",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, enable_scale_to_zero=False, scale_to_zero_grace_period_s=10.0),
        rev(),
        {},
        {"enable_scale_to_zero": False, "scale_to_zero_grace_period_s": 10.0},
        id="scale-to-zero-cfg",
    ),
    pytest.param(
        dataclasses.replace(
            DEFAULT, max_scale_up_rate=10.0, max_scale_down_rate=4.0, activator_capacity=50.0
        ),
        rev(),
        {"max_scale_up_rate": 10.0, "max_scale_down_rate": 4.0, "activator_capacity": 50.0},
        {},
        id="rates-and-activator-capacity-from-config-only",
    ),
    pytest.param(
        DEFAULT,
        rev(min_scale="2", max_scale="5"),
        {},
        {"min_scale": 2, "max_scale": 5},
        id="min-max",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, min_scale=1, max_scale=8),
        rev(),
        {},
        {"min_scale": 1, "max_scale": 8},
        id="min-max-cfg",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, min_scale=1, max_scale=8),
        rev(min_scale="0", max_scale="0"),
        {},
        {},
        id="annotation-zero-overrides-cfg",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, max_scale=5, max_scale_limit=10),
        rev(),
        {},
        {"max_scale": 5},
        id="cfg-max-within-limit",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, max_scale=5, max_scale_limit=10),
        rev(max_scale="20"),
        {},
        {"max_scale": 10},
        id="annotation-max-capped-at-limit",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, max_scale=5, max_scale_limit=10),
        rev(max_scale="0"),
        {},
        {"max_scale": 10},
        id="annotation-unbounded-capped-at-limit",
    ),
    pytest.param(
        DEFAULT,
        rev(initial_scale="3"),
        {"initial_scale": 3},
        {"initial_scale": 3},
        id="initial-scale",
    ),
    pytest.param(
        DEFAULT, rev(initial_scale="0"), {}, {}, id="initial-zero-not-allowed-falls-back-to-cfg"
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, allow_zero_initial_scale=True),
        rev(initial_scale="0"),
        {"initial_scale": 0},
        {"initial_scale": 0},
        id="initial-zero-allowed",
    ),
    pytest.param(
        dataclasses.replace(DEFAULT, initial_scale=2),
        rev(initial_scale="0"),
        {"initial_scale": 2},
        {"initial_scale": 2},
        id="initial-zero-falls-back-to-cfg-2",
    ),
]


@pytest.mark.parametrize(("config", "revision", "decider", "bounds"), OVERRIDES)
def test_overrides(
    config: AutoscalerConfig,
    revision: Revision,
    decider: dict[str, object],
    bounds: dict[str, object],
) -> None:
    got = resolve(config, revision)
    assert got.decider == dataclasses.replace(DeciderSpec(), **decider)  # type: ignore[arg-type]
    assert got.bounds == dataclasses.replace(BoundsSpec(), **bounds)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("annotations", "metric", "aggregation"),
    [
        pytest.param({}, "concurrency", "linear", id="defaults"),
        pytest.param({A + "metric": "rps"}, "rps", "linear", id="rps"),
        pytest.param({A + "metric": "concurrency"}, "concurrency", "linear", id="concurrency"),
        pytest.param(
            {A + "metric-aggregation-algorithm": "weighted-exponential"},
            "concurrency",
            "weighted-exponential",
            id="weighted",
        ),
        pytest.param(
            {A + "metric-aggregation-algorithm": "weightedExponential"},
            "concurrency",
            "weighted-exponential",
            id="weighted-camel-value",
        ),
        pytest.param(
            {A + "metricAggregationAlgorithm": "weighted-exponential"},
            "concurrency",
            "weighted-exponential",
            id="legacy-key",
        ),
        pytest.param(
            {
                A + "metric-aggregation-algorithm": "linear",
                A + "metricAggregationAlgorithm": "weighted-exponential",
            },
            "concurrency",
            "linear",
            id="hyphenated-wins",
        ),
        pytest.param(
            {A + "class": "kpa.autoscaling.knative.dev"}, "concurrency", "linear", id="explicit-kpa"
        ),
    ],
)
def test_metric_and_aggregation(annotations: dict[str, str], metric: str, aggregation: str) -> None:
    got = resolve(DEFAULT, rev_raw(annotations))
    assert (got.metric, got.aggregation, got.decider.scaling_metric) == (
        metric,
        aggregation,
        metric,
    )


@pytest.mark.parametrize(
    ("annotations", "field", "value"),
    [
        pytest.param({A + "minScale": "3"}, "min_scale", 3, id="minScale"),
        pytest.param(
            {A + "min-scale": "2", A + "minScale": "3"}, "min_scale", 2, id="min-scale-wins"
        ),
        pytest.param(
            {A + "min-scale": "2", A + "minScale": "x"},
            "min_scale",
            2,
            id="alias-ignored-not-validated",
        ),
        pytest.param({A + "maxScale": "7"}, "max_scale", 7, id="maxScale"),
        pytest.param(
            {A + "max-scale": "8", A + "maxScale": "7"}, "max_scale", 8, id="max-scale-wins"
        ),
        pytest.param({A + "initialScale": "4"}, "initial_scale", 4, id="initialScale"),
        pytest.param(
            {A + "initial-scale": "5", A + "initialScale": "4"},
            "initial_scale",
            5,
            id="initial-wins",
        ),
        pytest.param(
            {A + "scaleToZeroPodRetentionPeriod": "10s"},
            "scale_to_zero_pod_retention_s",
            10.0,
            id="ret",
        ),
    ],
)
def test_bounds_aliases(annotations: dict[str, str], field: str, value: object) -> None:
    assert getattr(resolve(DEFAULT, rev_raw(annotations)).bounds, field) == value


@pytest.mark.parametrize(
    ("annotations", "field", "value"),
    [
        pytest.param(
            {A + "targetUtilizationPercentage": "50"}, "target_value", 50.0, id="targetUtilization"
        ),
        pytest.param(
            {A + "target-utilization-percentage": "60", A + "targetUtilizationPercentage": "50"},
            "target_value",
            60.0,
            id="tu-wins",
        ),
        pytest.param(
            {A + "targetBurstCapacity": "0"}, "target_burst_capacity", 0.0, id="targetBurstCapacity"
        ),
        pytest.param(
            {A + "panicWindowPercentage": "20"}, "panic_window_s", 12.0, id="panicWindowPercentage"
        ),
        pytest.param(
            {A + "panicThresholdPercentage": "150"},
            "panic_threshold",
            1.5,
            id="panicThresholdPercentage",
        ),
        pytest.param(
            {A + "panic-threshold-percentage": "300", A + "panicThresholdPercentage": "150"},
            "panic_threshold",
            3.0,
            id="pt-wins",
        ),
        pytest.param({A + "scaleDownDelay": "1m"}, "scale_down_delay_s", 60.0, id="scaleDownDelay"),
    ],
)
def test_decider_aliases(annotations: dict[str, str], field: str, value: object) -> None:
    assert getattr(resolve(DEFAULT, rev_raw(annotations)).decider, field) == value


# Every annotation's validation: (annotations, key the message must start with).
INVALID = [
    pytest.param({A + "class": "foo.knative.dev"}, A + "class", id="class-unknown-knative"),
    pytest.param({A + "metric": "cpu"}, A + "metric", id="metric-cpu-for-kpa"),
    pytest.param({A + "metric": ""}, A + "metric", id="metric-empty"),
    pytest.param({A + "target": "0"}, A + "target", id="target-below-min"),
    pytest.param({A + "target": "0.001"}, A + "target", id="target-below-0.01"),
    pytest.param({A + "target": "x"}, A + "target", id="target-not-number"),
    pytest.param(
        {A + "target-utilization-percentage": "0.5"},
        A + "target-utilization-percentage",
        id="tu-low",
    ),
    pytest.param(
        {A + "target-utilization-percentage": "101"},
        A + "target-utilization-percentage",
        id="tu-high",
    ),
    pytest.param(
        {A + "targetUtilizationPercentage": "101"},
        A + "targetUtilizationPercentage",
        id="tu-alias-high",
    ),
    pytest.param(
        {A + "target-burst-capacity": "-2"}, A + "target-burst-capacity", id="tbc-negative"
    ),
    pytest.param(
        {A + "targetBurstCapacity": "x"}, A + "targetBurstCapacity", id="tbc-alias-not-number"
    ),
    pytest.param({A + "window": "5s"}, A + "window", id="window-short"),
    pytest.param({A + "window": "1h1s"}, A + "window", id="window-long"),
    pytest.param({A + "window": "6500ms"}, A + "window", id="window-not-whole"),
    pytest.param({A + "window": "60"}, A + "window", id="window-no-unit"),
    pytest.param(
        {A + "panic-window-percentage": "0.5"}, A + "panic-window-percentage", id="pwp-low"
    ),
    pytest.param(
        {A + "panicWindowPercentage": "101"}, A + "panicWindowPercentage", id="pwp-alias-high"
    ),
    pytest.param(
        {A + "panic-threshold-percentage": "109"}, A + "panic-threshold-percentage", id="ptp-low"
    ),
    pytest.param(
        {A + "panic-threshold-percentage": "1001"}, A + "panic-threshold-percentage", id="ptp-high"
    ),
    pytest.param({A + "min-scale": "-1"}, A + "min-scale", id="min-negative"),
    pytest.param({A + "minScale": "1.5"}, A + "minScale", id="min-alias-not-int"),
    pytest.param({A + "max-scale": "-1"}, A + "max-scale", id="max-negative"),
    pytest.param({A + "max-scale": "2", A + "min-scale": "3"}, A + "max-scale", id="max-below-min"),
    pytest.param({A + "maxScale": "2147483648"}, A + "maxScale", id="max-alias-over-int32"),
    pytest.param({A + "initial-scale": "-1"}, A + "initial-scale", id="initial-negative"),
    pytest.param({A + "initialScale": "x"}, A + "initialScale", id="initial-alias-not-int"),
    pytest.param({A + "activation-scale": "1"}, A + "activation-scale", id="activation-below-2"),
    pytest.param({A + "activation-scale": "x"}, A + "activation-scale", id="activation-not-int"),
    pytest.param(
        {A + "activation-scale": "3", A + "min-scale": "4"},
        A + "activation-scale",
        id="activation-below-min",
    ),
    pytest.param(
        {A + "activation-scale": "6", A + "max-scale": "5"},
        A + "activation-scale",
        id="activation-above-max",
    ),
    pytest.param({A + "scale-down-delay": "-1s"}, A + "scale-down-delay", id="delay-negative"),
    pytest.param({A + "scale-down-delay": "1h1s"}, A + "scale-down-delay", id="delay-over-1h"),
    pytest.param(
        {A + "scaleDownDelay": "1500ms"}, A + "scaleDownDelay", id="delay-alias-not-whole"
    ),
    pytest.param(
        {A + "scale-to-zero-pod-retention-period": "-1s"},
        A + "scale-to-zero-pod-retention-period",
        id="retention-negative",
    ),
    pytest.param(
        {A + "scaleToZeroPodRetentionPeriod": "2h"},
        A + "scaleToZeroPodRetentionPeriod",
        id="retention-alias-over-1h",
    ),
    pytest.param(
        {A + "metric-aggregation-algorithm": "median"},
        A + "metric-aggregation-algorithm",
        id="algorithm-unknown",
    ),
]


@pytest.mark.parametrize(("annotations", "key"), INVALID)
def test_invalid_annotation_names_key_and_value(annotations: dict[str, str], key: str) -> None:
    with pytest.raises(AnnotationError) as info:
        validate_annotations(annotations)
    assert str(info.value).startswith(f"{key} = {annotations[key]}: "), str(info.value)
    with pytest.raises(ResolveError, match=re.escape(f"{key} = {annotations[key]}: ")) as rinfo:
        resolve(DEFAULT, rev_raw(annotations))
    assert str(rinfo.value).startswith("revision default/iris-v1: ")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        pytest.param({A + "window": "5s"}, A + "window = 5s: must be within [6s, 1h]", id="window"),
        pytest.param(
            {A + "window": "6500ms"}, A + "window = 6500ms: must be whole seconds", id="whole"
        ),
        pytest.param(
            {A + "panic-threshold-percentage": "109"},
            A + "panic-threshold-percentage = 109: must be within [110, 1000]",
            id="threshold",
        ),
        pytest.param(
            {A + "max-scale": "2", A + "min-scale": "3"},
            A + "max-scale = 2: must be at least min-scale (3), or 0 (unbounded)",
            id="max-min",
        ),
        pytest.param(
            {A + "activation-scale": "6", A + "max-scale": "5", A + "min-scale": "1"},
            A
            + "activation-scale = 6: must be within [2, 5] (at least 2, and within min-scale..max-scale)",
            id="activation",
        ),
    ],
)
def test_annotation_message_text(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(AnnotationError, match="^" + re.escape(message) + "$"):
        validate_annotations(annotations)


def test_all_bad_annotations_are_listed() -> None:
    with pytest.raises(AnnotationError) as info:
        validate_annotations({A + "window": "1s", A + "target": "0", A + "minScale": "-3"})
    assert len(info.value.errors) == 3
    assert str(info.value) == "; ".join(info.value.errors)


@pytest.mark.parametrize(
    ("annotations", "kwargs", "key"),
    [
        pytest.param(
            {A + "initial-scale": "0"}, {}, A + "initial-scale", id="initial-zero-not-allowed"
        ),
        pytest.param(
            {A + "max-scale": "11"}, {"max_scale_limit": 10}, A + "max-scale", id="max-over-limit"
        ),
        pytest.param(
            {A + "maxScale": "0"},
            {"max_scale_limit": 10},
            A + "maxScale",
            id="max-unbounded-with-limit",
        ),
    ],
)
def test_config_dependent_rules_at_admission(
    annotations: dict[str, str], kwargs: dict[str, int], key: str
) -> None:
    with pytest.raises(AnnotationError, match="^" + re.escape(key + " = ")):
        validate_annotations(annotations, **kwargs)  # type: ignore[arg-type]


def test_config_dependent_rules_pass_when_config_allows() -> None:
    validate_annotations({A + "initial-scale": "0"}, allow_zero_initial_scale=True)
    validate_annotations({A + "max-scale": "10"}, max_scale_limit=10)


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param(
            {A + "class": "hpa.autoscaling.knative.dev", A + "metric": "cpu"}, id="hpa-cpu"
        ),
        pytest.param(
            {A + "class": "example.com/custom", A + "metric": "anything"},
            id="custom-class-any-metric",
        ),
        pytest.param(
            {A + "class": "hpa.autoscaling.knative.dev", A + "metric-aggregation-algorithm": "x"},
            id="hpa",
        ),
        pytest.param(
            {A + "activation-scale": "2", A + "min-scale": "2", A + "max-scale": "2"},
            id="activation-eq",
        ),
        pytest.param(
            {A + "scale-to-zero-pod-retention-period": "1500ms"}, id="retention-need-not-be-whole"
        ),
        pytest.param({A + "target-burst-capacity": "-1", A + "window": "1h"}, id="edges"),
        pytest.param(
            {"serving.knative.dev/other": "x", A + "unknown": "x"}, id="other-annotations-ignored"
        ),
    ],
)
def test_valid_annotations(annotations: dict[str, str]) -> None:
    validate_annotations(annotations)


def test_parse_annotations_values() -> None:
    got = parse_annotations(
        {
            A + "metric": "rps",
            A + "target": "12.5",
            A + "window": "2m",
            A + "scale-down-delay": "30s",
            A + "metricAggregationAlgorithm": "weightedExponential",
        }
    )
    assert got == AutoscalingAnnotations(
        metric="rps",
        target=12.5,
        window_s=120.0,
        scale_down_delay_s=30.0,
        metric_aggregation_algorithm="weighted-exponential",
    )


def test_annotation_table_keys() -> None:
    keys = [k for a in ANNOTATIONS for k in a.keys]
    assert len(keys) == len(set(keys)) == 15 + 10
    assert all(k.startswith(A) for k in keys)


@pytest.mark.parametrize(
    ("config", "annotations", "where"),
    [
        pytest.param(
            DEFAULT, {A + "class": "hpa.autoscaling.knative.dev"}, A + "class", id="hpa-annotation"
        ),
        pytest.param(
            dataclasses.replace(DEFAULT, pod_autoscaler_class="hpa.autoscaling.knative.dev"),
            {},
            "pod-autoscaler-class",
            id="hpa-config",
        ),
    ],
)
def test_only_kpa_is_resolved(
    config: AutoscalerConfig, annotations: dict[str, str], where: str
) -> None:
    with pytest.raises(ResolveError, match=re.escape(f"{where} = hpa.autoscaling.knative.dev")):
        resolve(config, rev_raw(annotations))


def test_kpa_annotation_overrides_hpa_config() -> None:
    config = dataclasses.replace(DEFAULT, pod_autoscaler_class="hpa.autoscaling.knative.dev")
    got = resolve(config, rev_raw({A + "class": "kpa.autoscaling.knative.dev"}))
    assert got.decider == DeciderSpec()
