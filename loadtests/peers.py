"""The hop benchmarks' peers beside this checkout's proxies: Knative Serving's own queue-proxy (Go)
and another checkout's queue-proxy (a baseline, for before/after comparisons).

Knative's queue-proxy is built by ``loadtests/build-knative-queue.sh`` from its Go module
(``knative.dev/serving/cmd/queue``, v0.42.2) and cached outside the repository, as hey is. It binds
its admin port 8022 and its stats port 9090 on all interfaces, with no way to change them, so a
benchmark that runs it runs whole in a network namespace of its own
(:func:`own_network_namespace`): the upstream, every proxy and the load generators share it, and
nothing else on the machine holds or sees those ports. See
``../shared/reference/knative-queue-proxy-peer.md``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

KNATIVE_QUEUE_VERSION = "v0.42.2"
_BUILD_KNATIVE_QUEUE = Path(__file__).parent / "build-knative-queue.sh"
_OWN_NETNS = "ZEROSERVE_BENCH_OWN_NETNS"  # set in the run that re-executed itself inside one

# --- Knative's queue-proxy ---------------------------------------------------------------------


def knative_queue_binary() -> str:
    """Knative's queue-proxy to run: ``$ZEROSERVE_KNATIVE_QUEUE``, else the build of
    ``loadtests/build-knative-queue.sh`` in the tools cache, built now when missing (about 40 s;
    needs Go and the module proxy, so call it before entering a network namespace)."""
    chosen = os.environ.get("ZEROSERVE_KNATIVE_QUEUE")
    if chosen:
        return chosen
    cache = Path(os.environ.get("ZEROSERVE_TOOLS_CACHE") or Path.home() / ".cache/zeroserve/tools")
    built = cache / f"knative-queue-{KNATIVE_QUEUE_VERSION}/queue"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    print(f"building Knative's queue-proxy {KNATIVE_QUEUE_VERSION} …", file=sys.stderr)
    out = subprocess.run(
        ["bash", str(_BUILD_KNATIVE_QUEUE)],
        env={**os.environ, "KNATIVE_QUEUE_VERSION": KNATIVE_QUEUE_VERSION},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]  # the script prints the binary's path last


# zap's production config, quieter: a client that closes its connection mid-request is logged as
# an error with a stack trace, so warnings are not worth the writes.
_ZAP_CONFIG = {
    "level": "error",
    "development": False,
    "outputPaths": ["stdout"],
    "errorOutputPaths": ["stderr"],
    "encoding": "json",
    "encoderConfig": {
        "timeKey": "timestamp",
        "levelKey": "severity",
        "nameKey": "logger",
        "callerKey": "caller",
        "messageKey": "message",
        "stacktraceKey": "stacktrace",
        "lineEnding": "",
        "levelEncoder": "",
        "timeEncoder": "iso8601",
        "durationEncoder": "",
        "callerEncoder": "",
    },
}


def knative_queue_env(user_port: int, port: int, gomaxprocs: int | None = None) -> dict[str, str]:
    """The whole environment of Knative's queue-proxy v0.42.2 for a benchmark (it gets nothing
    else, as under ``env -i``, so no ``OTEL_*``, ``GOMAXPROCS`` or proxy variable leaks in).

    Every variable its config struct requires (``pkg/queue/sharedmain/main.go``), as Knative's
    revision reconciler would set them for one CC=0 revision, with request metrics, the request
    log, tracing and profiling off: request metrics are off in Knative's defaults since
    ``OBSERVABILITY_CONFIG`` (v1.19); v0.42.2's own default was ``prometheus``. TLS starts only
    when certificates are mounted, so its port is named and never bound. ``gomaxprocs``: the
    cores it may use (1 when the proxies share one pinned core, as a one-worker nginx); else the
    Go runtime takes the machine's."""
    env = {
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "bench",
        "SERVING_CONFIGURATION": "bench",
        "SERVING_REVISION": "bench-00001",
        "SERVING_POD": "bench-00001-deployment-0",
        "SERVING_POD_IP": "127.0.0.1",
        "QUEUE_SERVING_PORT": str(port),
        "QUEUE_SERVING_TLS_PORT": str(port + 1),
        "USER_PORT": str(user_port),  # the upstream is always 127.0.0.1:USER_PORT
        "CONTAINER_CONCURRENCY": "0",  # no breaker
        "REVISION_TIMEOUT_SECONDS": "300",
        "SERVING_LOGGING_CONFIG": json.dumps(_ZAP_CONFIG),
        "SERVING_LOGGING_LEVEL": "error",
        "SERVING_ENABLE_REQUEST_LOG": "false",
        "SERVING_ENABLE_PROBE_REQUEST_LOG": "false",
        "SERVING_REQUEST_METRICS_BACKEND": "",  # "": no request metrics
        "TRACING_CONFIG_BACKEND": "none",  # "" would start an OpenCensus tracer
        "ENABLE_PROFILING": "false",
        "METRICS_DOMAIN": "knative.dev/internal/serving",
    }
    if gomaxprocs is not None:
        env["GOMAXPROCS"] = str(gomaxprocs)
    return env


# --- a network namespace of its own --------------------------------------------------------------


def own_network_namespace(module: str, argv: Sequence[str], **env: str) -> int | None:
    """Run the benchmark in a network namespace of its own: outside one, run ``python -m
    <module> <argv>`` again inside a new one (``unshare --net``, root only) with ``env`` added
    and return its exit status; inside it (that run), bring loopback up and return None: go on.

    The whole run moves, not only the peer: the upstream, the proxies and the load generators
    must reach each other on loopback, and a namespace's loopback is its own."""
    if os.environ.get(_OWN_NETNS) == "1":
        loopback_up()
        return None
    cmd = ["unshare", "--net", "--", sys.executable, "-m", module, *argv]
    proc = subprocess.Popen(cmd, env={**os.environ, **env, _OWN_NETNS: "1"})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait()  # it had the interrupt too, and stops its own processes


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in a 24-byte union


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2: a new network namespace's loopback starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, got)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


# --- another checkout ------------------------------------------------------------------------------


def checkout_label(checkout: Path) -> str:
    """A checkout's short commit (``-dirty`` when its tracked files differ from it), else its
    folder's name: ``"e11eb74"``."""
    git = ["git", "-C", str(checkout)]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return checkout.name
    return sha + ("-dirty" if dirty else "")


def checkout_problem(checkout: Path) -> str | None:
    """Why another checkout's queue-proxy cannot be measured as it is (no such folder, no
    ``queue_proxy`` package, its dataplane not compiled), else None."""
    if not (checkout / "queue_proxy" / "__main__.py").is_file():
        return f"{checkout}: no queue_proxy package there"
    probe = "import sys, dataplane; sys.exit(0 if dataplane.compiled() else 3)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=checkout,
        env={**os.environ, **checkout_env(checkout)},
        capture_output=True,
    )
    if done.returncode == 3:
        return (
            f"{checkout}: its dataplane is not compiled (there: "
            f"{sys.executable} setup.py -q build_ext --inplace)"
        )
    if done.returncode:
        return f"{checkout}: cannot import its dataplane: {done.stderr.decode().strip()[-300:]}"
    return None


def checkout_env(checkout: Path) -> dict[str, str]:
    """What to add to the environment so that Python imports another checkout's packages: on
    ``PYTHONPATH`` they come before this checkout's editable install (whose finder is appended to
    ``sys.meta_path``, after the path)."""
    return {"PYTHONPATH": str(checkout.resolve())}
