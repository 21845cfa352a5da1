"""config-autoscaler parsing: Knative's own vectors (reference §5.11) and the Go syntax it accepts."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from autoscaler.config import (
    DEFAULT,
    KEYS,
    AutoscalerConfig,
    ConfigError,
    unknown_keys,
)
from cluster.goparse import (
    HOUR,
    MILLISECOND,
    MINUTE,
    SECOND,
    format_duration,
    parse_bool,
    parse_duration,
    parse_float,
    parse_int32,
)


def test_defaults_are_knatives() -> None:
    assert AutoscalerConfig() == DEFAULT
    assert DEFAULT.container_concurrency_target_fraction == 0.7
    assert DEFAULT.container_concurrency_target_default == 100.0
    assert DEFAULT.target_utilization == 0.7
    assert DEFAULT.rps_target_default == 200.0
    assert DEFAULT.target_burst_capacity == 211.0
    assert DEFAULT.stable_window_s == 60.0
    assert DEFAULT.panic_window_percentage == 10.0
    assert DEFAULT.panic_threshold_percentage == 200.0
    assert DEFAULT.max_scale_up_rate == 1000.0
    assert DEFAULT.max_scale_down_rate == 2.0
    assert DEFAULT.enable_scale_to_zero is True
    assert DEFAULT.scale_to_zero_grace_period_s == 30.0
    assert DEFAULT.scale_to_zero_pod_retention_period_s == 0.0
    assert DEFAULT.scale_down_delay_s == 0.0
    assert DEFAULT.pod_autoscaler_class == "kpa.autoscaling.knative.dev"
    assert DEFAULT.activator_capacity == 100.0
    assert DEFAULT.initial_scale == 1
    assert DEFAULT.allow_zero_initial_scale is False
    assert DEFAULT.min_scale == 0
    assert DEFAULT.max_scale == 0
    assert DEFAULT.max_scale_limit == 0


def test_every_field_but_target_utilization_has_one_key() -> None:
    assert len(KEYS) == len(set(KEYS)) == 20
    field_names = {f.name for f in dataclasses.fields(AutoscalerConfig)}
    assert len(field_names) == len(KEYS) + 1  # target_utilization is not a key (reference §1.7)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.stable_window_s = 1.0  # type: ignore[misc]


VALID = [
    pytest.param({}, DEFAULT, id="empty-is-defaults"),
    pytest.param(
        {"container-concurrency-target-percentage": "55"},
        dataclasses.replace(DEFAULT, container_concurrency_target_fraction=0.55),
        id="target-percentage-55-is-fraction",
    ),
    pytest.param(
        {"container-concurrency-target-percentage": "0.71"},
        dataclasses.replace(DEFAULT, container_concurrency_target_fraction=0.71),
        id="target-percentage-as-legacy-fraction",
    ),
    pytest.param(
        {"container-concurrency-target-percentage": "1"},
        dataclasses.replace(DEFAULT, container_concurrency_target_fraction=1.0),
        id="target-percentage-1-is-100-percent",
    ),
    pytest.param(
        {"target-burst-capacity": "-1"},
        dataclasses.replace(DEFAULT, target_burst_capacity=-1.0),
        id="tbc-minus-one-unlimited",
    ),
    pytest.param(
        {"target-burst-capacity": "0"},
        dataclasses.replace(DEFAULT, target_burst_capacity=0.0),
        id="tbc-zero",
    ),
    pytest.param(
        {"enable-scale-to-zero": "TRUE"},
        DEFAULT,
        id="scale-to-zero-TRUE",
    ),
    pytest.param(
        {"enable-scale-to-zero": "false"},
        dataclasses.replace(DEFAULT, enable_scale_to_zero=False),
        id="scale-to-zero-false",
    ),
    pytest.param(
        {"max-scale-up-rate": "1.001"},
        dataclasses.replace(DEFAULT, max_scale_up_rate=1.001),
        id="max-scale-up-rate-just-above-1",
    ),
    pytest.param(
        {"activator-capacity": "1"},
        dataclasses.replace(DEFAULT, activator_capacity=1.0),
        id="activator-capacity-1",
    ),
    pytest.param(
        {"allow-zero-initial-scale": "true", "initial-scale": "0"},
        dataclasses.replace(DEFAULT, allow_zero_initial_scale=True, initial_scale=0),
        id="initial-scale-zero-allowed",
    ),
    pytest.param(
        {"max-scale": "10", "max-scale-limit": "11"},
        dataclasses.replace(DEFAULT, max_scale=10, max_scale_limit=11),
        id="max-scale-within-limit",
    ),
    pytest.param(
        {"min-scale": "4"},
        dataclasses.replace(DEFAULT, min_scale=4),
        id="min-scale-with-unbounded-max",
    ),
    pytest.param(
        {
            "stable-window": "1m30s",
            "scale-down-delay": "1.5h",
            "scale-to-zero-grace-period": "300ms",
            "scale-to-zero-pod-retention-period": "1m1s",
        },
        dataclasses.replace(
            DEFAULT,
            stable_window_s=90.0,
            scale_down_delay_s=5400.0,
            scale_to_zero_grace_period_s=0.3,
            scale_to_zero_pod_retention_period_s=61.0,
        ),
        id="durations-in-go-syntax",
    ),
    pytest.param(
        {"stable-window": "6s", "panic-window-percentage": "1"},
        dataclasses.replace(DEFAULT, stable_window_s=6.0, panic_window_percentage=1.0),
        id="window-and-panic-percentage-at-minimum",
    ),
    pytest.param(
        {"stable-window": "1h", "panic-window-percentage": "100"},
        dataclasses.replace(DEFAULT, stable_window_s=3600.0, panic_window_percentage=100.0),
        id="window-and-panic-percentage-at-maximum",
    ),
    pytest.param(
        {"panic-threshold-percentage": "50", "requests-per-second-target-default": "0.01"},
        dataclasses.replace(DEFAULT, panic_threshold_percentage=50.0, rps_target_default=0.01),
        id="panic-threshold-not-validated-rps-at-target-min",
    ),
    pytest.param(
        {"pod-autoscaler-class": "hpa.autoscaling.knative.dev", "min-scale": "2", "max-scale": "2"},
        dataclasses.replace(
            DEFAULT, pod_autoscaler_class="hpa.autoscaling.knative.dev", min_scale=2, max_scale=2
        ),
        id="class-and-min-equal-max",
    ),
]


@pytest.mark.parametrize(("data", "want"), VALID)
def test_valid(data: dict[str, str], want: AutoscalerConfig) -> None:
    assert AutoscalerConfig.from_data(data) == want


INVALID = [
    pytest.param(
        {"scale-down-delay": "-1m23s"}, "scale-down-delay", id="negative-scale-down-delay"
    ),
    pytest.param(
        {"scale-to-zero-pod-retention-period": "-4m11s"},
        "scale-to-zero-pod-retention-period",
        id="negative-pod-retention",
    ),
    pytest.param(
        {"target-burst-capacity": "-11"}, "target-burst-capacity", id="tbc-negative-not-minus-one"
    ),
    pytest.param(
        {"container-concurrency-target-percentage": "-42"},
        "container-concurrency-target-percentage",
        id="target-percentage-negative",
    ),
    pytest.param(
        {"container-concurrency-target-percentage": "142.4"},
        "container-concurrency-target-percentage",
        id="target-percentage-over-100",
    ),
    pytest.param(
        {"container-concurrency-target-percentage": "0"},
        "container-concurrency-target-percentage",
        id="target-percentage-zero",
    ),
    pytest.param(
        {"requests-per-second-target-default": "-5.25"},
        "requests-per-second-target-default",
        id="rps-target-negative",
    ),
    pytest.param({"max-scale-up-rate": "1"}, "max-scale-up-rate", id="max-scale-up-rate-1"),
    pytest.param(
        {"max-scale-down-rate": "-55"}, "max-scale-down-rate", id="max-scale-down-rate-negative"
    ),
    pytest.param({"max-scale-down-rate": "1"}, "max-scale-down-rate", id="max-scale-down-rate-1"),
    pytest.param({"stable-window": "1h1s"}, "stable-window", id="stable-window-over-1h"),
    pytest.param({"stable-window": "1s"}, "stable-window", id="stable-window-under-6s"),
    pytest.param(
        {"stable-window": "61984ms"}, "stable-window", id="stable-window-not-whole-seconds"
    ),
    pytest.param(
        {"scale-down-delay": "61984ms"}, "scale-down-delay", id="scale-down-delay-not-whole-seconds"
    ),
    pytest.param(
        {"activator-capacity": "0.95"}, "activator-capacity", id="activator-capacity-under-1"
    ),
    pytest.param(
        {"panic-window-percentage": "0.1"}, "panic-window-percentage", id="panic-window-pct-under-1"
    ),
    pytest.param(
        {"panic-window-percentage": "110"},
        "panic-window-percentage",
        id="panic-window-pct-over-100",
    ),
    pytest.param(
        {
            "container-concurrency-target-percentage": "1",
            "container-concurrency-target-default": "0.001",
        },
        "container-concurrency-target-percentage",
        id="target-product-under-target-min",
    ),
    pytest.param(
        {"scale-to-zero-grace-period": "0s"}, "scale-to-zero-grace-period", id="grace-zero"
    ),
    pytest.param({"initial-scale": "0"}, "initial-scale", id="initial-scale-zero-not-allowed"),
    pytest.param({"initial-scale": "-1"}, "initial-scale", id="initial-scale-negative"),
    pytest.param({"initial-scale": "invalid"}, "initial-scale", id="initial-scale-not-int"),
    pytest.param(
        {"allow-zero-initial-scale": "invalid"},
        "allow-zero-initial-scale",
        id="allow-zero-not-bool",
    ),
    pytest.param(
        {"enable-scale-to-zero": "invalid"}, "enable-scale-to-zero", id="scale-to-zero-not-bool"
    ),
    pytest.param({"max-scale": "-1"}, "max-scale", id="max-scale-negative"),
    pytest.param(
        {"max-scale": "10", "max-scale-limit": "9"}, "max-scale", id="max-scale-over-limit"
    ),
    pytest.param({"max-scale-limit": "-9"}, "max-scale-limit", id="max-scale-limit-negative"),
    pytest.param(
        {"max-scale": "0", "max-scale-limit": "11"},
        "max-scale",
        id="max-scale-unbounded-with-limit",
    ),
    pytest.param(
        {"max-scale-limit": "11"}, "max-scale", id="max-scale-default-unbounded-with-limit"
    ),
    pytest.param({"min-scale": "4", "max-scale": "3"}, "min-scale", id="min-over-max"),
    pytest.param({"min-scale": "-1"}, "min-scale", id="min-scale-negative"),
    pytest.param({"max-scale": "2147483648"}, "max-scale", id="max-scale-over-int32"),
    pytest.param({"max-scale": "1.5"}, "max-scale", id="max-scale-not-int"),
    pytest.param({"stable-window": "60"}, "stable-window", id="duration-without-unit"),
    pytest.param({"max-scale-up-rate": "NaN"}, "max-scale-up-rate", id="nan-refused"),
    pytest.param({"activator-capacity": "1_000"}, "activator-capacity", id="float-with-underscore"),
]


@pytest.mark.parametrize(("data", "key"), INVALID)
def test_invalid_names_key_and_value(data: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        AutoscalerConfig.from_data(data)
    message = str(info.value)
    assert message.startswith(f"{key} = "), message
    assert info.value.errors == (message,)
    if key in data:
        assert f"{key} = {data[key]}:" in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(
            {"stable-window": "3s"}, "stable-window = 3s: must be within [6s, 1h]", id="window"
        ),
        pytest.param(
            {"max-scale": "10", "max-scale-limit": "9"},
            "max-scale = 10: must be within [1, 9] when max-scale-limit is 9",
            id="max-scale-limit",
        ),
        pytest.param(
            {"max-scale-limit": "11"},
            "max-scale = 0: must be within [1, 11] when max-scale-limit is 11",
            id="absent-key-echoes-default",
        ),
        pytest.param(
            {"target-burst-capacity": "-11"},
            "target-burst-capacity = -11: must be at least 0, or -1 (unlimited)",
            id="tbc",
        ),
        pytest.param(
            {"stable-window": "61984ms"},
            "stable-window = 61984ms: must be whole seconds",
            id="whole-seconds",
        ),
        pytest.param(
            {"min-scale": "4", "max-scale": "3"},
            "min-scale = 4: must be within [0, 3] (max-scale)",
            id="min-max",
        ),
    ],
)
def test_message_text(data: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        AutoscalerConfig.from_data(data)


def test_all_errors_of_one_parse_are_collected_in_table_order() -> None:
    data = {
        "scale-down-delay": "-1m23s",
        "stable-window": "1s",
        "initial-scale": "invalid",
        "max-scale-up-rate": "1",
    }
    with pytest.raises(ConfigError) as info:
        AutoscalerConfig.from_data(data)
    assert [e.split(" = ")[0] for e in info.value.errors] == [
        "stable-window",
        "max-scale-up-rate",
        "scale-down-delay",
        "initial-scale",
    ]
    assert str(info.value) == "; ".join(info.value.errors)
    assert isinstance(info.value, ValueError)


def test_a_key_is_reported_once_even_if_its_cross_rule_also_fails() -> None:
    with pytest.raises(ConfigError) as info:
        AutoscalerConfig.from_data({"min-scale": "-1", "max-scale": "-3"})
    assert len(info.value.errors) == 2


def test_unknown_keys_are_ignored_and_reported_example_is_silent() -> None:
    data = {
        "_example": "# stable-window: 1s\n",
        "tick-interval": "2s",
        "panic-window": "6s",
        "stable-window": "30s",
    }
    cfg = AutoscalerConfig.from_data(data)
    assert cfg == dataclasses.replace(DEFAULT, stable_window_s=30.0)
    assert unknown_keys(data) == ("panic-window", "tick-interval")
    assert unknown_keys({"_example": "x"}) == ()
    assert unknown_keys({k: "" for k in KEYS}) == ()


# -- the Go syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        pytest.param("1m30s", 90 * SECOND, id="minutes-seconds"),
        pytest.param("61984ms", 61984 * MILLISECOND, id="milliseconds"),
        pytest.param("1h", HOUR, id="hour"),
        pytest.param("-1m23s", -(MINUTE + 23 * SECOND), id="negative"),
        pytest.param("+5s", 5 * SECOND, id="plus-sign"),
        pytest.param("0s", 0, id="zero-seconds"),
        pytest.param("0", 0, id="bare-zero"),
        pytest.param("-0", 0, id="negative-bare-zero"),
        pytest.param("300ms", 300 * MILLISECOND, id="300ms"),
        pytest.param("1.5h", 90 * MINUTE, id="fractional-hours"),
        pytest.param(".5s", SECOND // 2, id="leading-point"),
        pytest.param("5.s", 5 * SECOND, id="trailing-point"),
        pytest.param("1h1s", HOUR + SECOND, id="1h1s"),
        pytest.param(
            "2h45m10.5s", 2 * HOUR + 45 * MINUTE + 10 * SECOND + SECOND // 2, id="three-units"
        ),
        pytest.param("1us", 1000, id="us"),
        pytest.param("1\u00b5s", 1000, id="micro-sign"),
        pytest.param("1\u03bcs", 1000, id="greek-mu"),
        pytest.param("7ns", 7, id="ns"),
        pytest.param("1.0000000001s", SECOND, id="sub-nanosecond-truncated"),
    ],
)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("60", id="no-unit"),
        pytest.param("1.5", id="fraction-no-unit"),
        pytest.param("s", id="unit-only"),
        pytest.param(".s", id="point-only"),
        pytest.param("1d", id="days-unknown"),
        pytest.param("1 s", id="space"),
        pytest.param("-", id="sign-only"),
        pytest.param("1m-3s", id="inner-sign"),
        pytest.param("3000000h", id="overflow"),
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|unit"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        pytest.param(0, "0s", id="zero"),
        pytest.param(HOUR, "1h", id="hour"),
        pytest.param(90 * SECOND, "1m30s", id="mixed"),
        pytest.param(300 * MILLISECOND, "300ms", id="ms"),
        pytest.param(-6 * SECOND, "-6s", id="negative"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1", True),
        ("t", True),
        ("TRUE", True),
        ("True", True),
        ("0", False),
        ("F", False),
        ("false", False),
    ],
)
def test_parse_bool(text: str, want: bool) -> None:
    assert parse_bool(text) is want


@pytest.mark.parametrize("text", ["yes", "", "tRUE", "2"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bool"):
        parse_bool(text)


def test_parse_numbers() -> None:
    assert parse_int32("+7") == 7
    assert parse_int32("-2147483648") == -(2**31)
    assert parse_float("1e2") == 100.0
    assert parse_float(".5") == 0.5
    assert parse_float("-Inf") == -math.inf
    for bad in ("", " 1", "1.0.0", "nan", "0x10", "1e400"):
        with pytest.raises(ValueError, match="number"):
            parse_float(bad)
    for bad in ("1.0", "2147483648", "", "1e3"):
        with pytest.raises(ValueError, match=r"integer|range"):
            parse_int32(bad)


# -- deploy/config-autoscaler.yaml -------------------------------------------------------------

CONFIGMAP = Path(__file__).resolve().parent.parent / "deploy" / "config-autoscaler.yaml"


def example_block_data() -> dict[str, str]:
    """The key/value lines of the ConfigMap's ``_example`` block, as a user would uncomment them."""
    doc = yaml.safe_load(CONFIGMAP.read_text())
    assert doc["kind"] == "ConfigMap"
    assert doc["metadata"] == {
        "name": "config-autoscaler",
        "namespace": "zeroserve-system",
        "labels": doc["metadata"]["labels"],
    }
    assert set(doc["data"]) == {"_example"}, "only the _example block: defaults are built in"
    data: dict[str, str] = {}
    for line in doc["data"]["_example"].splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(": ")
        assert key not in data, f"{key} documented twice"
        data[key] = value.strip('"')
    return data


def test_configmap_example_gives_exactly_the_defaults() -> None:
    data = example_block_data()
    assert AutoscalerConfig.from_data(data) == DEFAULT
    assert unknown_keys(data) == ()


def test_configmap_example_documents_every_key() -> None:
    assert list(example_block_data()) == list(KEYS)


def test_configmap_data_as_is_gives_the_defaults() -> None:
    doc = yaml.safe_load(CONFIGMAP.read_text())
    assert AutoscalerConfig.from_data(doc["data"]) == DEFAULT
