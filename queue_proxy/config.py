"""The queue-proxy's settings, parsed from the environment with Knative's names (DESIGN.md).

Every error names the variable and echoes its value: ``USER_PORT = 'abc': must be an integer``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cluster.batching import Batching, BatchingError, batching_from_env
from cluster.envparse import integer, non_negative_int, seconds
from cluster.payload_logging import LoggerError, PayloadLogging, logger_from_env
from cluster.spec import ReadinessProbe


class ConfigError(ValueError):
    """A missing or malformed environment variable; the message starts with its name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything ``python -m queue_proxy`` reads from its environment."""

    user_port: int
    """USER_PORT: the model server's port on 127.0.0.1 (required)."""
    serving_port: int = 8012
    """QUEUE_SERVING_PORT: where clients (the activator) reach this replica."""
    admin_port: int = 8022
    """ADMIN_PORT: ``/wait-for-drain`` (the preStop hook)."""
    metrics_port: int = 9090
    """METRICS_PORT: ``/stats`` (JSON stat) and ``/metrics`` (Prometheus)."""
    bind_host: str = "0.0.0.0"
    """QUEUE_BIND_ADDRESS: the address the three servers listen on."""
    container_concurrency: int = 0
    """CONTAINER_CONCURRENCY: requests in flight to the model server; 0 = unlimited."""
    timeout_s: float = 300.0
    """REVISION_TIMEOUT_SECONDS: total time for one request, from arrival (0 = none)."""
    response_start_timeout_s: float = 0.0
    """REVISION_RESPONSE_START_TIMEOUT_SECONDS: request sent → first response byte (0 = none)."""
    idle_timeout_s: float = 0.0
    """REVISION_IDLE_TIMEOUT_SECONDS: longest gap between two writes to the client (0 = none)."""
    header_timeout_s: float = 60.0
    """QUEUE_HEADER_TIMEOUT_SECONDS: a client's request head must be complete within this long,
    else 408 and close (0 = none); Knative's queue-proxy ReadHeaderTimeout (1 min)."""
    keepalive_timeout_s: float = 75.0
    """QUEUE_KEEPALIVE_TIMEOUT_SECONDS: an idle keep-alive client connection closes after this
    long between requests (0 = never); nginx's keepalive_timeout (75 s)."""
    max_connections: int | None = None
    """QUEUE_MAX_CONNECTIONS: client connections open at once, one more is closed at once and
    counted (0 = no cap; unset: half the open-file limit, ``default_max_connections``)."""
    drain_quiet_period_s: float = 30.0
    """QUEUE_DRAIN_QUIET_PERIOD_SECONDS: a drain ends after this long with no new request."""
    readiness_probe: ReadinessProbe = field(default_factory=ReadinessProbe)
    """SERVING_READINESS_PROBE: Knative's JSON probe (default: TCP on the user port)."""
    namespace: str = ""
    """SERVING_NAMESPACE."""
    revision: str = ""
    """SERVING_REVISION."""
    service: str = ""
    """SERVING_SERVICE."""
    pod: str = ""
    """SERVING_POD: the pod name reported in every stat (default: the host name)."""
    pod_ip: str = ""
    """SERVING_POD_IP."""
    gpu_interval_s: float = 5.0
    """QUEUE_GPU_INTERVAL_SECONDS: how often GPU utilisation and memory are sampled."""
    log_level: str = "INFO"
    """QUEUE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""
    log_format: str = "json"
    """QUEUE_LOG_FORMAT: json (one object per line) or text (what ``zeroserve up`` sets in its
    text mode, so that every process it runs logs alike)."""
    batching: Batching | None = None
    """QUEUE_BATCH_MAX_SIZE, QUEUE_BATCH_MAX_LATENCY, QUEUE_BATCH_MODE: request batching, from
    the revision's ``batching.zeroserve.dev/*`` annotations (:mod:`cluster.batching`; None: off)."""
    payload_logging: PayloadLogging | None = None
    """QUEUE_LOGGER_URL, QUEUE_LOGGER_MODE: payload logging to a sink, from the revision's
    ``logger.zeroserve.dev/*`` annotations (:mod:`cluster.payload_logging`; None: off)."""
    observability_dir: str = ""
    """QUEUE_OBSERVABILITY_DIR: a folder of one file per ``config-observability`` key (the
    ConfigMap mounted as a volume, or the local runtime's folder), read again when it changes:
    tracing (docs/tracing.md). Unset: no tracing."""
    serving_fd: int | None = None
    """QUEUE_SERVING_FD: a listening socket to serve on instead of binding QUEUE_SERVING_PORT
    (zeroserve's own: the local supervisor opens the socket, so that its port is never free
    between being picked and being served; the same for QUEUE_ADMIN_FD and QUEUE_METRICS_FD)."""
    admin_fd: int | None = None
    """QUEUE_ADMIN_FD: a listening socket for the admin port (see QUEUE_SERVING_FD)."""
    metrics_fd: int | None = None
    """QUEUE_METRICS_FD: a listening socket for the metrics port (see QUEUE_SERVING_FD)."""
    ready_fd: int | None = None
    """QUEUE_READY_FD: a file descriptor (a pipe) to which the queue-proxy writes one JSON line,
    ``{"event": "ready", "pid": N}``, the first time the model server is ready, then closes it:
    the local supervisor's cue, like sd_notify's READY=1 (zeroserve's own; Kubernetes probes)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for var, name, parse in _TABLE:
            raw = env.get(var)
            if raw is None or raw == "":
                if name == "user_port":
                    raise ConfigError(f"{var} is not set: the model server's port is required")
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{var} = {raw!r}: {exc}") from exc
        try:
            values["batching"] = batching_from_env(env)
        except BatchingError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            values["payload_logging"] = logger_from_env(env)
        except LoggerError as exc:
            raise ConfigError(str(exc)) from exc
        if not values.get("pod"):
            values["pod"] = socket.gethostname()
        settings = cls(**values)
        for port_field in ("serving_port", "admin_port", "metrics_port"):
            if getattr(settings, port_field.replace("_port", "_fd")) is None:
                settings.check_own_port(port_field, getattr(settings, port_field))
        return settings

    def check_own_port(self, port_field: str, port: int) -> None:
        """Refuse a USER_PORT that is one of this queue-proxy's own ports: the probe and every
        request would reach the queue-proxy itself, not the model server."""
        if port == self.user_port and port != 0:
            var = next(v for v, n, _ in _TABLE if n == port_field)
            raise ConfigError(
                f"USER_PORT = {self.user_port} is this queue-proxy's own {var} ({port}): "
                "the model server must listen on another port"
            )

    def field_names(self) -> list[str]:
        return [f.name for f in fields(self)]


def _port(raw: str) -> int:
    value = integer(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port within [0, 65535]")
    return value


def _level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _log_format(raw: str) -> str:
    fmt = raw.strip().lower()
    if fmt not in ("json", "text"):
        raise ValueError("must be json or text")
    return fmt


def _text(raw: str) -> str:
    return raw


def parse_probe(raw: str) -> ReadinessProbe:
    """Knative's ``SERVING_READINESS_PROBE``: a K8s Probe as JSON (or a list; the first is used).

    ``{"tcpSocket":{"port":8080,"host":"127.0.0.1"}}`` or ``{"httpGet":{"path":"/ready","port":8080}}``,
    with ``periodSeconds``/``timeoutSeconds``/``successThreshold``/``failureThreshold``.
    """
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError("must be JSON (a Kubernetes probe)") from None
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object (a Kubernetes probe)")
    kind: Literal["http", "tcp"]
    if "httpGet" in data:
        action, kind = data["httpGet"], "http"
    elif "tcpSocket" in data:
        action, kind = data["tcpSocket"], "tcp"
    elif "exec" in data or "grpc" in data or not data:
        action, kind = {}, "tcp"  # Knative probes exec/gRPC probes as TCP on the user port
    else:
        raise ValueError("must have httpGet or tcpSocket")
    if not isinstance(action, dict):
        raise ValueError("httpGet/tcpSocket must be an object")
    port = action.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} must be a number within [0, 65535]")
    path = action.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with /")

    def number(key: str, default: float, minimum: float) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ValueError(f"{key} {value!r} must be a number >= {minimum}")
        return float(value)

    period = number("periodSeconds", 0, 0)
    return ReadinessProbe(
        kind=kind,
        path=path,
        port=port,
        period_s=period,
        # Knative: with periodSeconds > 0, timeoutSeconds defaults to 1 and is at least 1
        timeout_s=max(1.0, number("timeoutSeconds", 1, 0)) if period > 0 else 1.0,
        success_threshold=int(number("successThreshold", 1, 1)),
        failure_threshold=int(number("failureThreshold", 3, 1)),
    )


_TABLE: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("USER_PORT", "user_port", _port),
    ("QUEUE_SERVING_PORT", "serving_port", _port),
    ("ADMIN_PORT", "admin_port", _port),
    ("METRICS_PORT", "metrics_port", _port),
    ("QUEUE_BIND_ADDRESS", "bind_host", _text),
    ("CONTAINER_CONCURRENCY", "container_concurrency", non_negative_int),
    ("REVISION_TIMEOUT_SECONDS", "timeout_s", seconds),
    ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "response_start_timeout_s", seconds),
    ("REVISION_IDLE_TIMEOUT_SECONDS", "idle_timeout_s", seconds),
    ("QUEUE_HEADER_TIMEOUT_SECONDS", "header_timeout_s", seconds),
    ("QUEUE_KEEPALIVE_TIMEOUT_SECONDS", "keepalive_timeout_s", seconds),
    ("QUEUE_MAX_CONNECTIONS", "max_connections", non_negative_int),
    ("QUEUE_DRAIN_QUIET_PERIOD_SECONDS", "drain_quiet_period_s", seconds),
    ("SERVING_READINESS_PROBE", "readiness_probe", parse_probe),
    ("SERVING_NAMESPACE", "namespace", _text),
    ("SERVING_REVISION", "revision", _text),
    ("SERVING_SERVICE", "service", _text),
    ("SERVING_POD", "pod", _text),
    ("SERVING_POD_IP", "pod_ip", _text),
    ("QUEUE_GPU_INTERVAL_SECONDS", "gpu_interval_s", seconds),
    ("QUEUE_LOG_LEVEL", "log_level", _level),
    ("QUEUE_LOG_FORMAT", "log_format", _log_format),
    ("QUEUE_SERVING_FD", "serving_fd", non_negative_int),
    ("QUEUE_ADMIN_FD", "admin_fd", non_negative_int),
    ("QUEUE_METRICS_FD", "metrics_fd", non_negative_int),
    ("QUEUE_READY_FD", "ready_fd", non_negative_int),
    ("QUEUE_OBSERVABILITY_DIR", "observability_dir", _text),
)
