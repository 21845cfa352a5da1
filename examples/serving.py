"""What the example model servers share: env parsing, JSON errors, and serving until SIGTERM.

JSON errors and the graceful shutdown (:func:`serve_until_signal`) come from
:mod:`modelserver.http`; a clean shutdown exits 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import uvloop

# The HTTP plumbing lives with the built-in model server, which serves the same protocols.
from modelserver.http import json_error, json_errors, serve_until_signal

__all__ = [
    "ConfigError",
    "ServerSettings",
    "env_float",
    "env_int",
    "json_error",
    "json_errors",
    "run",
    "serve_until_signal",
    "server_settings_from_env",
]


class ConfigError(ValueError):
    """An environment variable has a value the server cannot use; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Where to listen, how long the start-up takes before listening, and how long shutdown
    waits for requests in flight."""

    host: str = "127.0.0.1"
    port: int = 8080
    startup_delay_s: float = 0.0
    shutdown_timeout_s: float = 30.0


def server_settings_from_env(
    env: Mapping[str, str], *, startup_delay_default: float | None = None
) -> ServerSettings:
    """``HOST``, ``PORT``, ``SHUTDOWN_TIMEOUT_SECONDS`` and, when ``startup_delay_default`` is
    given, ``STARTUP_DELAY_SECONDS`` (waited before listening)."""
    delay = (
        0.0
        if startup_delay_default is None
        else env_float(env, "STARTUP_DELAY_SECONDS", startup_delay_default, low=0.0, high=3600.0)
    )
    return ServerSettings(
        host=env.get("HOST", "").strip() or "127.0.0.1",
        port=env_int(env, "PORT", 8080, low=0, high=65535),
        startup_delay_s=delay,
        shutdown_timeout_s=env_float(env, "SHUTDOWN_TIMEOUT_SECONDS", 30.0, low=0.0, high=3600.0),
    )


def env_int(env: Mapping[str, str], key: str, default: int, *, low: int, high: int) -> int:
    """``env[key]`` as an int within [low, high], or ``default`` when unset or empty."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} = {raw}: must be an integer in [{low}, {high}]") from None
    if not low <= value <= high:
        raise ConfigError(f"{key} = {raw}: must be an integer in [{low}, {high}]")
    return value


def env_float(
    env: Mapping[str, str], key: str, default: float, *, low: float, high: float
) -> float:
    """``env[key]`` as a float within [low, high], or ``default`` when unset or empty."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} = {raw}: must be a number in [{low:g}, {high:g}]") from None
    if not low <= value <= high:  # also rejects NaN
        raise ConfigError(f"{key} = {raw}: must be a number in [{low:g}, {high:g}]")
    return value


def run(serve: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run ``serve()`` on uvloop until it returns; the exit status of a clean shutdown is 0."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0
