"""Per-revision payload logging, by annotation: keys, defaults and validation (pure, no I/O).

``logger.zeroserve.dev/url`` turns it on: the sink, an ``http(s)://host[:port][/path]`` URL that
receives each request and response as a CloudEvent (KServe's format); ``logger.zeroserve.dev/mode``
is ``all`` (the default), ``request`` or ``response``. The InferenceService form
``spec.predictor.logger.{url, mode}`` becomes these annotations. What they do is in
docs/payload-logging.md; the queue-proxy does the logging (:mod:`queue_proxy.payload_log`).

The annotations reach the queue-proxy as environment variables with the same values (:data:`ENV`:
the local supervisor sets them, ``zeroserve render`` writes them beside the Deployment's
annotations, and the scheme checks the two agree), parsed by the same rules; every error names
the key (or the variable) and echoes its value:
``logger.zeroserve.dev/mode = 'both': must be all, request or response``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast
from urllib.parse import urlsplit

from cluster.annotations import AnnotationError, unknown_keys

GROUP: Final = "logger.zeroserve.dev"
URL: Final = f"{GROUP}/url"
MODE: Final = f"{GROUP}/mode"
KEYS: Final = (URL, MODE)
ENV: Final = {URL: "QUEUE_LOGGER_URL", MODE: "QUEUE_LOGGER_MODE"}
"""The queue-proxy's environment variable for each annotation (same value, same rules)."""
MODES: Final = ("all", "request", "response")

Mode = Literal["all", "request", "response"]


class LoggerError(AnnotationError):
    """Invalid payload-logging settings: every problem, each naming its key and value."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadLogging:
    """A revision's payload logging: where events go (``host:port``, the request target, and
    the URL as written) and which (``mode``)."""

    url: str
    hostport: str
    target: str
    host: str
    mode: Mode = "all"

    @property
    def tls(self) -> bool:
        """An https:// sink: events go over TLS, the certificate checked against the host."""
        return self.url.lower().startswith("https:")

    @property
    def requests(self) -> bool:
        return self.mode in ("all", "request")

    @property
    def responses(self) -> bool:
        return self.mode in ("all", "response")


def _sink(url: str) -> tuple[str, str, str] | str:
    """(hostport, target, Host) of a sink URL, or why it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL (the sink)"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"must be an {parts.scheme}:// URL with a valid port"
    if not parts.hostname:
        return f"must name a host ({parts.scheme}://host[:port][/path])"
    host = parts.hostname
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return hostport, target, parts.netloc


def parse_logger(
    values: Mapping[str, str], names: Mapping[str, str] | None = None
) -> PayloadLogging | None:
    """The payload logging ``values`` (annotations) set, or None when ``url`` is absent and
    nothing else of the group is written. ``names`` renames the keys in errors (the
    environment's variables). Raises :class:`LoggerError` naming each bad key."""
    names = names or {}
    errors: list[str] = []

    def name(key: str) -> str:
        return names.get(key, key)

    if not names:  # (annotations, not the environment)
        errors += unknown_keys(values, GROUP, KEYS)
    raw_url = values.get(URL)
    sink: tuple[str, str, str] | str = ""
    if raw_url is not None:
        sink = _sink(raw_url)
        if isinstance(sink, str):
            errors.append(f"{name(URL)} = {raw_url!r}: {sink}")
    mode: Mode = "all"
    raw_mode = values.get(MODE)
    if raw_mode is not None:
        text = raw_mode.strip().lower()
        if text in MODES:
            mode = cast(Mode, text)
        else:
            errors.append(f"{name(MODE)} = {raw_mode!r}: must be all, request or response")
        if raw_url is None:
            errors.append(f"{name(MODE)}: needs {name(URL)} (the sink: logging is on only with it)")
    if errors:
        raise LoggerError(tuple(errors))
    if raw_url is None or isinstance(sink, str):
        return None
    hostport, target, host = sink
    return PayloadLogging(
        url=raw_url.strip(), hostport=hostport, target=target, host=host, mode=mode
    )


def logger_env(annotations: Mapping[str, str]) -> dict[str, str]:
    """The queue-proxy's environment for a revision's logger annotations (those written)."""
    return {var: annotations[key] for key, var in ENV.items() if key in annotations}


def logger_from_env(env: Mapping[str, str]) -> PayloadLogging | None:
    """The payload logging the queue-proxy's environment sets; errors name the variables."""
    values = {key: env[var] for key, var in ENV.items() if env.get(var, "") != ""}
    return parse_logger(values, ENV)


def logger_annotations(raw: Mapping[str, object]) -> dict[str, str]:
    """An InferenceService's ``spec.predictor.logger`` (``url``, ``mode``) as the annotations."""
    out: dict[str, str] = {}
    if raw.get("url") is not None:
        out[URL] = str(raw["url"])
    if raw.get("mode") is not None:
        out[MODE] = str(raw["mode"])
    return out
