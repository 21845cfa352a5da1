"""Per-revision request batching, by annotation: keys, defaults and validation (pure, no I/O).

``batching.zeroserve.dev/max-batch-size`` turns batching on (rows per batch, ≥ 1);
``batching.zeroserve.dev/max-latency`` is a Go duration (default 100ms);
``batching.zeroserve.dev/mode`` is ``adaptive`` (the default) or ``static``. What they mean is
in docs/batching.md; the queue-proxy does the batching (:mod:`queue_proxy.batching`).

The annotations reach the queue-proxy as environment variables with the same values
(:data:`ENV`: the local supervisor sets them, ``zeroserve render`` writes them beside the
Deployment's annotations), parsed by the same rules; every error names the key (or the variable)
and echoes its value: ``batching.zeroserve.dev/max-batch-size = '0': must be an integer >= 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cluster.annotations import AnnotationError, unknown_keys
from cluster.goparse import SECOND, parse_duration

GROUP: Final = "batching.zeroserve.dev"
MAX_BATCH_SIZE: Final = f"{GROUP}/max-batch-size"
MAX_LATENCY: Final = f"{GROUP}/max-latency"
MODE: Final = f"{GROUP}/mode"
KEYS: Final = (MAX_BATCH_SIZE, MAX_LATENCY, MODE)
ENV: Final = {
    MAX_BATCH_SIZE: "QUEUE_BATCH_MAX_SIZE",
    MAX_LATENCY: "QUEUE_BATCH_MAX_LATENCY",
    MODE: "QUEUE_BATCH_MODE",
}
"""The queue-proxy's environment variable for each annotation (same value, same rules)."""

MODE_ADAPTIVE: Final = "adaptive"
MODE_STATIC: Final = "static"
DEFAULT_MAX_LATENCY_S: Final = 0.1
MAX_BATCH_SIZE_LIMIT: Final = 100_000
MAX_LATENCY_LIMIT_NS: Final = 3600 * SECOND

Mode = Literal["adaptive", "static"]


class BatchingError(AnnotationError):
    """Invalid batching settings: every problem, each naming its key and value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    """A revision's batching: at most ``max_batch_size`` rows per batch; ``max_latency_s`` is how
    long a request may wait for others (static) or what a batch's service time must stay
    within (adaptive: the batch size limit follows it)."""

    max_batch_size: int
    max_latency_s: float = DEFAULT_MAX_LATENCY_S
    mode: Mode = MODE_ADAPTIVE


def parse_batching(
    values: Mapping[str, str], names: Mapping[str, str] | None = None
) -> Batching | None:
    """The batching that ``values`` (annotations) set, or None when ``max-batch-size`` is absent
    and nothing else of the group is written. ``names`` renames the keys in errors (the
    environment's variables). Raises :class:`BatchingError` naming each bad key: an unknown key
    of the group, a bad value, or ``max-latency``/``mode`` without ``max-batch-size``."""
    names = names or {}
    errors: list[str] = []

    def name(key: str) -> str:
        return names.get(key, key)

    if not names:  # (annotations, not the environment)
        errors += unknown_keys(values, GROUP, KEYS)
    raw_size = values.get(MAX_BATCH_SIZE)
    size = 0
    if raw_size is not None:
        try:
            size = int(raw_size.strip())
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_BATCH_SIZE_LIMIT:
            errors.append(
                f"{name(MAX_BATCH_SIZE)} = {raw_size!r}: must be an integer within "
                f"[1, {MAX_BATCH_SIZE_LIMIT}] (rows per batch)"
            )
    latency_s = DEFAULT_MAX_LATENCY_S
    raw_latency = values.get(MAX_LATENCY)
    if raw_latency is not None:
        try:
            ns = parse_duration(raw_latency.strip())
        except ValueError as exc:
            errors.append(f"{name(MAX_LATENCY)} = {raw_latency!r}: {exc}")
        else:
            if not 0 < ns <= MAX_LATENCY_LIMIT_NS:
                errors.append(
                    f"{name(MAX_LATENCY)} = {raw_latency!r}: must be a duration within (0, 1h]"
                )
            latency_s = ns / SECOND
    mode: Mode = MODE_ADAPTIVE
    raw_mode = values.get(MODE)
    if raw_mode is not None:
        text = raw_mode.strip()
        if text == MODE_STATIC:
            mode = MODE_STATIC
        elif text != MODE_ADAPTIVE:
            errors.append(f"{name(MODE)} = {raw_mode!r}: must be adaptive or static")
    if raw_size is None:
        for key in (MAX_LATENCY, MODE):
            if key in values:
                errors.append(
                    f"{name(key)}: needs {name(MAX_BATCH_SIZE)} (batching is on only with it)"
                )
    if errors:
        raise BatchingError(tuple(errors))
    if raw_size is None:
        return None
    return Batching(max_batch_size=size, max_latency_s=latency_s, mode=mode)


def batching_env(annotations: Mapping[str, str]) -> dict[str, str]:
    """The queue-proxy's environment for a revision's batching annotations (those written)."""
    return {var: annotations[key] for key, var in ENV.items() if key in annotations}


def batching_from_env(env: Mapping[str, str]) -> Batching | None:
    """The batching the queue-proxy's environment sets; errors name the variables."""
    values = {key: env[var] for key, var in ENV.items() if env.get(var, "") != ""}
    return parse_batching(values, ENV)
