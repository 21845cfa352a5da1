"""The model server's composition root: ``python -m modelserver --name NAME --format FMT --model
PATH_OR_URI [--port N]``.

Reads flags and the environment (``PORT``, ``HOST``, ``SHUTDOWN_TIMEOUT_SECONDS``, ``LOG_LEVEL``,
``LOG_FORMAT``), checks what can be checked before listening (the format's library is installed, a
local model path holds one model file: otherwise exit 2 with the reason), configures logging, and
serves on uvloop until SIGTERM. A model that fails to load after listening (a fetch, a corrupt
file, a failed warm-up) stops the server with exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvloop

from metrics.logs import configure_logging
from modelserver.http import serve_until_signal
from modelserver.model import FORMATS, LoadOptions, ModelError, check_format, model_file
from modelserver.server import STATE, Hooks, ModelConfig, make_app


class ConfigError(ValueError):
    """A flag or environment variable has a value the server cannot use; the message names it."""


def parse_shape(text: str) -> tuple[int, ...]:
    """``-1,4`` → (-1, 4): integers ≥ -1, comma-separated."""
    try:
        dims = tuple(int(d) for d in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(
            f"--example-input-shape {text}: must be comma-separated integers, e.g. =-1,4"
        ) from None
    if not dims or any(d < -1 or d == 0 for d in dims):
        raise ConfigError(
            f"--example-input-shape {text}: dimensions must be positive, or -1 for any size"
        )
    return dims


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m modelserver",
        description="Serve one saved model over KServe V1 and Open Inference Protocol V2.",
    )
    p.add_argument("--name", required=True, help="the model's name in the URL paths")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="the model's format")
    p.add_argument(
        "--model", required=True, help="a model file or one-model directory, or a storage URI"
    )
    p.add_argument(
        "--sha256",
        default=env.get("ZEROSERVE_MODEL_SHA256", "").strip() or None,
        help="the artifact's expected sha256 (hex; default $ZEROSERVE_MODEL_SHA256): checked "
        "before loading",
    )
    p.add_argument("--port", type=int, default=None, help="listening port (default: $PORT or 8080)")
    p.add_argument("--host", default=env.get("HOST", "").strip() or "127.0.0.1")
    p.add_argument(
        "--device",
        default="auto",
        help="pytorch/onnx: auto (cuda when present, else cpu), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--example-input-shape",
        default=None,
        help="TorchScript: the input's shape, e.g. --example-input-shape=-1,4 (-1: any size)",
    )
    p.add_argument("--log-level", default=env.get("LOG_LEVEL", "").strip() or "info")
    p.add_argument(
        "--log-format",
        default=env.get("LOG_FORMAT", "").strip() or "json",
        choices=("json", "text"),
    )
    return p


def _port(arg: int | None, env: Mapping[str, str]) -> int:
    if arg is not None:
        if not 0 <= arg <= 65535:
            raise ConfigError(f"--port {arg}: must be within [0, 65535]")
        return arg
    raw = env.get("PORT", "").strip()
    if not raw:
        return 8080
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"PORT = {raw}: must be an integer in [0, 65535]") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"PORT = {raw}: must be an integer in [0, 65535]")
    return port


def _shutdown_timeout(env: Mapping[str, str]) -> float:
    raw = env.get("SHUTDOWN_TIMEOUT_SECONDS", "").strip()
    if not raw:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:  # also rejects NaN
        raise ConfigError(f"SHUTDOWN_TIMEOUT_SECONDS = {raw}: must be a number in [0, 3600]")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise ConfigError(f"--device {text}: must be auto, cpu, cuda or cuda:N")


def _sha256(text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.strip().lower().removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"--sha256 {text!r}: must be 64 hex digits")
    return digest


def _name(text: str) -> str:
    if not text or "/" in text or ":" in text:
        raise ConfigError(f"--name {text!r}: must be non-empty, without '/' or ':'")
    return text


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = _parser(env).parse_args(argv)  # exits 2 with argparse's message on a bad flag
    try:
        shape = None if args.example_input_shape is None else parse_shape(args.example_input_shape)
        config = ModelConfig(
            name=_name(args.name),
            format=args.format,
            model=args.model,
            options=LoadOptions(device=_device(args.device), example_input_shape=shape),
            sha256=_sha256(args.sha256),
        )
        port = _port(args.port, env)
        shutdown_timeout_s = _shutdown_timeout(env)
        check_format(config.format)
        if "://" not in config.model and config.sha256 is None:  # else fetched after listening
            model_file(Path(config.model), config.format)
    except (ConfigError, ModelError) as exc:
        print(f"modelserver: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, args.host, port, shutdown_timeout_s))


async def _serve(config: ModelConfig, host: str, port: int, shutdown_timeout_s: float) -> int:
    stop = asyncio.Event()
    app = make_app(config, hooks=Hooks(on_load_error=stop.set))

    def drain() -> None:
        app[STATE].draining = True

    await serve_until_signal(
        app,
        host=host,
        port=port,
        shutdown_timeout_s=shutdown_timeout_s,
        on_drain=drain,
        stop=stop,
        access_log=None,
    )
    return 1 if app[STATE].load_error is not None else 0
