"""From config-autoscaler and a revision's annotations to what the decider sees (reference §1.1).

Pure: :func:`resolve` is Knative's ``MakeDecider`` + ``ResolveMetricTarget`` + ``MakeMetric`` +
``ScaleBounds`` + ``GetInitialScale`` in one function, with the annotations read by
:mod:`cluster.annotations` (hyphenated keys win over legacy camelCase aliases).

It plays the reconciler, not the admission webhook: the spec loader has already rejected bad
annotations with :func:`cluster.annotations.validate_annotations` and the config in force then.
The rules that depend on config-autoscaler are applied here as Knative's reconciler applies
them, so that a later ConfigMap change never makes a running revision unresolvable:

* ``initial-scale`` = 0 while ``allow-zero-initial-scale`` is false falls back to the config's
  ``initial-scale`` (``GetInitialScale``);
* a ``max-scale`` beyond ``max-scale-limit`` (or unbounded while a limit is set) is capped at the
  limit. Knative would keep the admitted value; zeroserve enforces the limit instead, since the
  limit is the operator's statement of what the cluster can afford.

Annotations that are malformed or out of range whatever the config are still errors
(:class:`ResolveError` naming the annotation), as is a class other than the KPA, the only
autoscaler zeroserve implements.

Scraping: zeroserve's activator is always in the request path (Knative's TBC = -1 mode), yet the
queue-proxies are still scraped whatever ``target-burst-capacity`` says, because the activator
reports only the requests it proxies and the decider needs the pods' own view.
``target_burst_capacity`` is passed to the decider for the excess-burst-capacity figure only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from autoscaler.config import AutoscalerConfig
from autoscaler.scaling import BoundsSpec, DeciderSpec
from cluster.annotations import (
    ALGORITHM_LINEAR,
    CLASS,
    KPA_CLASS,
    METRIC_RPS,
    TARGET_MIN,
    AnnotationError,
    parse_annotations,
)
from cluster.goparse import SECOND
from cluster.spec import Revision, RevisionKey

Metric = Literal["concurrency", "rps"]
Aggregation = Literal["linear", "weighted-exponential"]


class ResolveError(ValueError):
    """A revision cannot be scaled by the KPA: the message names the annotation and its value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedRevision:
    """Everything the autoscaler loop needs for one revision, resolved once per config/revision.

    ``decider`` feeds the pure decider (``reachable`` is True here: the loop sets it from the
    routing state, and forces ``bounds.min_scale`` to 0 when unreachable, reference §1.6).
    ``panic_window_s`` is the panic window of the metric (also in ``decider``); ``metric`` and
    ``aggregation`` choose what the collector averages and how.
    """

    key: RevisionKey
    decider: DeciderSpec
    bounds: BoundsSpec
    panic_window_s: float
    metric: Metric
    aggregation: Aggregation
    container_concurrency: int


def panic_window_s(stable_window_s: float, panic_window_percentage: float) -> float:
    """Knative's ``MakeMetric``: ``round(stable × pct / 100, 1 s)``, at least 1 s (one bucket).

    60 s × 10 % → 6 s; 6 s × 10 % = 0.6 s → 1 s; 30 s × 10 % → 3 s; 15 s × 10 % = 1.5 s → 2 s
    (Go's ``Duration.Round`` rounds halves away from zero). See tests/test_resolve.py.
    """
    # As Go: the float product truncated to whole nanoseconds, then rounded to the second.
    ns = int(round(stable_window_s * SECOND) * panic_window_percentage / 100.0)
    seconds = math.floor(ns / SECOND + 0.5)
    return float(max(1, seconds))


def resolve(config: AutoscalerConfig, revision: Revision) -> ResolvedRevision:
    """Resolve ``revision``'s annotations with ``config`` into the decider's spec (reference §1.1).

    Raises :class:`ResolveError` naming the annotation when one is invalid, or when the class
    (annotation, else ``pod-autoscaler-class``) is not the KPA.
    """
    try:
        # allow_zero_initial_scale=True, max_scale_limit=0: those two rules are applied below
        # with reconciler semantics (see the module docstring).
        ann = parse_annotations(
            revision.annotations, allow_zero_initial_scale=True, max_scale_limit=0
        )
    except AnnotationError as exc:
        raise ResolveError(f"revision {revision.key}: {exc}") from exc

    autoscaler_class = ann.autoscaler_class or config.pod_autoscaler_class
    if autoscaler_class != KPA_CLASS:
        where = CLASS.key if ann.autoscaler_class else "pod-autoscaler-class"
        raise ResolveError(
            f"revision {revision.key}: {where} = {autoscaler_class}: zeroserve implements only {KPA_CLASS}"
        )

    metric: Metric = "rps" if ann.metric == METRIC_RPS else "concurrency"
    aggregation: Aggregation = (
        "weighted-exponential"
        if ann.metric_aggregation_algorithm not in (None, ALGORITHM_LINEAR)
        else "linear"
    )
    cc = revision.container_concurrency

    # ResolveMetricTarget. CC=0 → total 100, TU 0.7 → target 70; CC=10 → 10 and 7; rps → 200, 140.
    if metric == "rps":
        total = config.rps_target_default
        utilization = config.target_utilization
    else:
        total = float(cc) if cc else config.container_concurrency_target_default
        utilization = config.container_concurrency_target_fraction
    if ann.target is not None:
        # The target annotation is capped by containerConcurrency: target 50 with CC 10 → 10.
        total = min(ann.target, float(cc)) if metric == "concurrency" and cc else ann.target
    if ann.target_utilization_percentage is not None:
        utilization = ann.target_utilization_percentage / 100.0
    target = max(TARGET_MIN, total * utilization)

    stable_window = ann.window_s if ann.window_s is not None else config.stable_window_s
    panic_pct = (
        ann.panic_window_percentage
        if ann.panic_window_percentage is not None
        else config.panic_window_percentage
    )
    panic_window = panic_window_s(stable_window, panic_pct)
    panic_threshold_pct = (
        ann.panic_threshold_percentage
        if ann.panic_threshold_percentage is not None
        else config.panic_threshold_percentage
    )
    tbc = (
        ann.target_burst_capacity
        if ann.target_burst_capacity is not None
        else config.target_burst_capacity
    )
    scale_down_delay = (
        ann.scale_down_delay_s if ann.scale_down_delay_s is not None else config.scale_down_delay_s
    )
    retention = (
        ann.scale_to_zero_pod_retention_period_s
        if ann.scale_to_zero_pod_retention_period_s is not None
        else config.scale_to_zero_pod_retention_period_s
    )

    # GetInitialScale: the annotation unless absent, or 0 while zero is not allowed.
    initial_scale = config.initial_scale
    if ann.initial_scale is not None and (ann.initial_scale > 0 or config.allow_zero_initial_scale):
        initial_scale = ann.initial_scale

    # ScaleBounds, with max-scale-limit enforced (module docstring).
    min_scale = ann.min_scale if ann.min_scale is not None else config.min_scale
    max_scale = ann.max_scale if ann.max_scale is not None else config.max_scale
    if config.max_scale_limit > 0 and (max_scale == 0 or max_scale > config.max_scale_limit):
        max_scale = config.max_scale_limit

    decider = DeciderSpec(
        max_scale_up_rate=config.max_scale_up_rate,
        max_scale_down_rate=config.max_scale_down_rate,
        scaling_metric=metric,
        target_value=target,
        total_value=total,
        target_burst_capacity=tbc,
        activator_capacity=config.activator_capacity,
        panic_threshold=panic_threshold_pct / 100.0,
        stable_window_s=stable_window,
        panic_window_s=panic_window,
        initial_scale=initial_scale,
        reachable=True,
        activation_scale=ann.activation_scale if ann.activation_scale is not None else 0,
        scale_down_delay_s=scale_down_delay,
    )
    bounds = BoundsSpec(
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial_scale,
        enable_scale_to_zero=config.enable_scale_to_zero,
        scale_to_zero_grace_period_s=config.scale_to_zero_grace_period_s,
        scale_to_zero_pod_retention_s=retention,
        stable_window_s=stable_window,
    )
    return ResolvedRevision(
        key=revision.key,
        decider=decider,
        bounds=bounds,
        panic_window_s=panic_window,
        metric=metric,
        aggregation=aggregation,
        container_concurrency=cc,
    )
