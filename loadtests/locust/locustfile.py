"""Locust users for zeroserve's example services, through the activator (the ingress).

Run it from ``loadtests/run.py`` (which starts ``zeroserve up``, picks the users for the spec and
writes the report), or by hand from the repository root::

    ZS_SHAPE=step loadtests/.venv/bin/locust -f loadtests/locust/locustfile.py --headless \\
        --host http://127.0.0.1:8080 --zs-rps 40 --zs-duration 120 InferV2ByPath PredictV1ByHost

Users (pass their class names; all of them run if none is named):

| class | request | names the service by |
| --- | --- | --- |
| InferV2ByPath / InferV2ByHost | ``POST /v2/models/<svc>/infer`` (Open Inference Protocol) | path / Host |
| PredictV1ByPath / PredictV1ByHost | ``POST /v1/models/<svc>:predict`` (KServe V1) | path / Host |
| PredictV1Tagged | V1 predict with Host ``<tag>-<svc>.<ns>.<domain>`` for each ``--zs-tags`` tag | tagged Host |
| SleepByHost | ``GET /?sleep=<ms>`` (the emulated GPU model, Knative's autoscale image) | Host |

The shape is chosen by the environment variable ``ZS_SHAPE`` (steady, step, spike, diurnal,
trace: locust picks the shape class before it parses flags); its parameters are ``--zs-*`` flags
or ``ZS_*`` variables (``--help`` lists them). Each user sends at most ``--zs-user-rps`` requests
per second (``constant_throughput``): a target rate R runs ``ceil(R / user-rps)`` users, and the
rate is met while a request takes less than ``1 / user-rps`` seconds.

With ``--zs-requests-csv PATH`` every completed request is appended to PATH (completion time,
name, latency, status, error), which the report turns into exact per-second percentiles.
"""

from __future__ import annotations

import csv
import os
import random
import time

import locust.stats
import shapes as _shapes
from locust import FastHttpUser, constant_throughput, events, task

# Write the --csv history every second and flush it every two, so the runner can show progress
# (locust's defaults flush every 5 s).
locust.stats.CSV_STATS_INTERVAL_SEC = 1
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 2

V1_BODY = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
V2_BODY = {
    "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("zeroserve", "the service under test and the load shape")
    group.add_argument("--zs-service", default="iris", env_var="ZS_SERVICE", help="service name")
    group.add_argument("--zs-namespace", default="default", env_var="ZS_NAMESPACE")
    group.add_argument("--zs-domain", default="example.com", env_var="ZS_DOMAIN")
    group.add_argument(
        "--zs-tags", default="", env_var="ZS_TAGS", help="comma-separated tags for PredictV1Tagged"
    )
    group.add_argument(
        "--zs-sleep-ms", type=int, default=100, env_var="ZS_SLEEP_MS", help="SleepByHost's ?sleep="
    )
    group.add_argument(
        "--zs-user-rps",
        type=float,
        default=1.0,
        env_var="ZS_USER_RPS",
        help="requests per second of one user (constant_throughput)",
    )
    group.add_argument("--zs-duration", type=float, default=60.0, env_var="ZS_DURATION")
    group.add_argument(
        "--zs-rps", type=float, default=10.0, env_var="ZS_RPS", help="peak (or steady) rate"
    )
    group.add_argument("--zs-steps", type=int, default=3, env_var="ZS_STEPS")
    group.add_argument("--zs-step-s", type=float, default=0.0, env_var="ZS_STEP_S")
    group.add_argument("--zs-spike-start-s", type=float, default=0.0, env_var="ZS_SPIKE_START_S")
    group.add_argument("--zs-spike-len-s", type=float, default=0.0, env_var="ZS_SPIKE_LEN_S")
    group.add_argument("--zs-period-s", type=float, default=0.0, env_var="ZS_PERIOD_S")
    group.add_argument("--zs-min-rps", type=float, default=0.0, env_var="ZS_MIN_RPS")
    group.add_argument("--zs-trace", default="", env_var="ZS_TRACE", help="CSV of second,rps")
    group.add_argument("--zs-trace-speed", type=float, default=1.0, env_var="ZS_TRACE_SPEED")
    group.add_argument("--zs-trace-scale", type=float, default=1.0, env_var="ZS_TRACE_SCALE")
    group.add_argument(
        "--zs-requests-csv", default="", env_var="ZS_REQUESTS_CSV", help="per-request log"
    )


# --- the per-request log -----------------------------------------------------------------------


class _RequestLog:
    def __init__(self, path: str) -> None:
        self._fh = open(path, "w", newline="")  # noqa: SIM115 - closed on quitting
        self._writer = csv.writer(self._fh)
        self._writer.writerow(("time", "name", "response_time_ms", "status", "error"))
        self._flushed = time.monotonic()

    def write(self, name: str, response_time: float, status: int, error: str) -> None:
        self._writer.writerow((f"{time.time():.6f}", name, f"{response_time:.3f}", status, error))
        now = time.monotonic()
        if now - self._flushed >= 1.0:
            self._fh.flush()
            self._flushed = now

    def close(self) -> None:
        self._fh.close()


_log: _RequestLog | None = None


@events.init.add_listener
def _open_log(environment, **_kwargs) -> None:
    global _log
    path = environment.parsed_options.zs_requests_csv if environment.parsed_options else ""
    if path:
        _log = _RequestLog(path)


@events.request.add_listener
def _on_request(name, response_time, response, exception, **_kwargs) -> None:
    if _log is None:
        return
    status = getattr(response, "status_code", 0) or 0
    error = "" if exception is None else f"{type(exception).__name__}: {exception}"[:200]
    _log.write(name, response_time, int(status), error.replace("\n", " "))


@events.quitting.add_listener
def _close_log(**_kwargs) -> None:
    if _log is not None:
        _log.close()


# --- users -------------------------------------------------------------------------------------


class ZeroserveUser(FastHttpUser):
    """A client of one zeroserve service, at most ``--zs-user-rps`` requests per second."""

    abstract = True

    def wait_time(self) -> float:
        return constant_throughput(self.environment.parsed_options.zs_user_rps)(self)

    @property
    def options(self):
        return self.environment.parsed_options

    def service_host(self, tag: str = "") -> str:
        o = self.options
        prefix = f"{tag}-" if tag else ""
        return f"{prefix}{o.zs_service}.{o.zs_namespace}.{o.zs_domain}"

    def post_json(self, path: str, body: object, name: str, expect_key: str, host: str = ""):
        headers = {"Host": host} if host else {}
        with self.client.post(
            path, json=body, headers=headers, name=name, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")
                return
            try:
                ok = expect_key in resp.json()
            except ValueError:
                ok = False
            if not ok:
                resp.failure(f"200 without {expect_key!r} in the body")


class InferV2ByPath(ZeroserveUser):
    @task
    def infer(self) -> None:
        svc = self.options.zs_service
        self.post_json(f"/v2/models/{svc}/infer", V2_BODY, "v2 infer (path)", "outputs")


class InferV2ByHost(ZeroserveUser):
    @task
    def infer(self) -> None:
        svc = self.options.zs_service
        self.post_json(
            f"/v2/models/{svc}/infer", V2_BODY, "v2 infer (host)", "outputs", self.service_host()
        )


class PredictV1ByPath(ZeroserveUser):
    @task
    def predict(self) -> None:
        svc = self.options.zs_service
        self.post_json(f"/v1/models/{svc}:predict", V1_BODY, "v1 predict (path)", "predictions")


class PredictV1ByHost(ZeroserveUser):
    @task
    def predict(self) -> None:
        svc = self.options.zs_service
        self.post_json(
            f"/v1/models/{svc}:predict",
            V1_BODY,
            "v1 predict (host)",
            "predictions",
            self.service_host(),
        )


class PredictV1Tagged(ZeroserveUser):
    @task
    def predict(self) -> None:
        tags = [t.strip() for t in self.options.zs_tags.split(",") if t.strip()]
        if not tags:
            raise RuntimeError("PredictV1Tagged needs --zs-tags (or ZS_TAGS)")
        tag = random.choice(tags)
        svc = self.options.zs_service
        self.post_json(
            f"/v1/models/{svc}:predict",
            V1_BODY,
            f"v1 predict (tag {tag})",
            "predictions",
            self.service_host(tag),
        )


class SleepByHost(ZeroserveUser):
    @task
    def sleep(self) -> None:
        ms = self.options.zs_sleep_ms
        with self.client.get(
            f"/?sleep={ms}",
            headers={"Host": self.service_host()},
            name=f"GET /?sleep={ms} (host)",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")


# The one shape locust sees: it takes the first LoadTestShape class in this module's namespace,
# so the chosen class is bound here and the others stay inside ``shapes``.
try:
    Shape = _shapes.SHAPES[os.environ.get("ZS_SHAPE", "steady")]
except KeyError:
    raise SystemExit(
        f"ZS_SHAPE = {os.environ.get('ZS_SHAPE')}: must be one of {', '.join(_shapes.SHAPES)}"
    ) from None
