"""Tracing (issue 24): the ``config-observability`` keys, the tracer's sampling and
propagation, against a real OTLP/HTTP receiver on loopback that decodes what the exporter
sends (tests/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from activator.app import build_activator
from activator.sinks import InProcessStatSink
from cluster.inferenceservice import translate
from cluster.kubernetes.render import render
from cluster.memory import MemoryConfig, MemoryEndpoints, MemoryRoutes
from cluster.observability import (
    CONFIGMAP,
    ENDPOINT,
    PROTOCOL,
    SAMPLING_RATE,
    ObservabilityError,
    Tracing,
    folder_stamp,
    parse_tracing,
    read_folder,
    tracing_data,
    write_folder,
)
from cluster.spec_loader import SpecError, parse_spec
from dataplane.tracing import Tracer
from tests.dataplane_fixtures import poll_until, run_app
from tests.e2e_support import ROOT, zeroserve_up
from tests.otlp_receiver import Received, otlp_receiver
from tests.test_queue_proxy import started

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

# --- the keys --------------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_reads_knatives_keys() -> None:
    assert parse_tracing({}) == Tracing()
    assert not parse_tracing({}).enabled
    on = parse_tracing(
        {PROTOCOL: "http/protobuf", ENDPOINT: "http://otel:4318/v1/traces", SAMPLING_RATE: "0.5"}
    )
    assert on == Tracing(
        protocol="http/protobuf", endpoint="http://otel:4318/v1/traces", sampling_rate=0.5
    )
    assert on.enabled
    assert parse_tracing(tracing_data(on)) == on


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({PROTOCOL: "zipkin"}, "tracing-protocol = 'zipkin': must be none or http/protobuf"),
        ({PROTOCOL: "grpc", ENDPOINT: "http://x:4317"}, "tracing-protocol = 'grpc': not supported"),
        ({PROTOCOL: "http/protobuf"}, "tracing-endpoint: required when tracing-protocol is"),
        ({ENDPOINT: "otel:4318"}, "tracing-endpoint = 'otel:4318': must be an http(s) URL"),
        ({SAMPLING_RATE: "2"}, "tracing-sampling-rate = '2': must be a number within [0, 1]"),
        ({SAMPLING_RATE: "x"}, "tracing-sampling-rate = 'x': must be a number within [0, 1]"),
        ({"tracing-rate": "1"}, "tracing-rate: unknown key"),
    ],
)
def test_bad_keys_are_named(data: dict[str, str], message: str) -> None:
    with pytest.raises(ObservabilityError) as err:
        parse_tracing(data)
    assert any(e.startswith(message) for e in err.value.errors), err.value.errors


def test_a_configmap_may_hold_knatives_other_keys_but_the_spec_may_not() -> None:
    data = {"logging.enable-request-log": "false", "_example": "..."}
    assert parse_tracing(data, strict=False) == Tracing()
    with pytest.raises(ObservabilityError, match=r"logging\.enable-request-log: unknown key"):
        parse_tracing(data)


def test_a_folder_of_one_file_per_key_round_trips(tmp_path: Path) -> None:
    folder = tmp_path / "observability"
    on = Tracing(protocol="http/protobuf", endpoint="http://127.0.0.1:1/v1/traces", sampling_rate=1)
    write_folder(folder, tracing_data(on))
    before = folder_stamp(folder)
    assert parse_tracing(read_folder(folder)) == on
    write_folder(folder, tracing_data(Tracing()))
    assert parse_tracing(read_folder(folder)) == Tracing()
    assert folder_stamp(folder) != before
    assert read_folder(tmp_path / "missing") == {}


# --- the tracer --------------------------------------------------------------------------------


async def test_sampling_follows_the_parent_then_the_rate() -> None:
    tracer = Tracer("activator")
    assert tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")]) is None  # off
    tracer.configure(Tracing(protocol="http/protobuf", endpoint="http://127.0.0.1:9/v1/traces"))
    try:
        assert tracer.on
        assert tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")]) is not None
        assert tracer.begin([("Traceparent", f"00-{TRACE}-{PARENT}-00")]) is None  # not sampled
        assert tracer.begin([]) is None  # rate 0, no parent
        assert (
            tracer.begin([("X-B3-TraceId", TRACE), ("X-B3-SpanId", PARENT), ("X-B3-Sampled", "1")])
            is not None
        )
        assert tracer.begin([("b3", f"{TRACE}-{PARENT}-0")]) is None
        tracer.configure(
            Tracing(
                protocol="http/protobuf", endpoint="http://127.0.0.1:9/v1/traces", sampling_rate=1
            )
        )
        assert tracer.begin([]) is not None
        tracer.configure(Tracing())
        assert not tracer.on
        assert tracer.begin([]) is None
    finally:
        tracer.close()


async def test_spans_reach_a_real_receiver_with_their_parents() -> None:
    async with otlp_receiver() as receiver:
        tracer = Tracer("queue-proxy", {"k8s.pod.name": "pod-1"})
        tracer.configure(Tracing(protocol="http/protobuf", endpoint=receiver.url, sampling_rate=1))
        try:
            ctx = tracer.begin([("traceparent", f"00-{TRACE}-{PARENT}-01")])
            assert ctx is not None
            loop = asyncio.get_running_loop()
            arrived = loop.time()
            root = tracer.span(
                "queue_proxy",
                ctx,
                kind="server",
                start_ns=tracer.wall_ns(arrived, loop.time()),
                attributes={"http.request.method": "POST"},
            )
            child = tracer.span("queue_forward", root, kind="client")
            headers = dict(tracer.headers(child))
            child.end()
            root.end()
            assert await asyncio.to_thread(tracer.flush)
            await receiver.until(lambda spans: len(spans) == 2)
        finally:
            tracer.close()
    by_name = {s.name: s for s in receiver.spans}
    server, client = by_name["queue_proxy"], by_name["queue_forward"]
    assert server.trace_id == client.trace_id == TRACE
    assert server.parent_id == PARENT
    assert client.parent_id == server.span_id
    assert (server.kind, client.kind) == ("server", "client")
    assert server.service == "queue-proxy"
    assert server.attributes == {"http.request.method": "POST"}
    assert headers["traceparent"] == f"00-{TRACE}-{client.span_id}-01"
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns


# --- the queue-proxy ---------------------------------------------------------------------------


def traced_model_app(tracer: Tracer, sleep_s: float) -> web.Application:
    """A model server that traces: its ``model`` span joins the trace its request carries."""

    async def predict(request: web.Request) -> web.Response:
        context = tracer.begin(request.headers.items())
        span = tracer.span("model", context, kind="server") if context is not None else None
        await asyncio.sleep(sleep_s)
        if span is not None:
            span.end()
        return web.json_response({"predictions": [1]})

    app = web.Application()
    app.router.add_post("/v1/models/{name}", predict)
    return app


def tracing_on(folder: Path, url: str, rate: float = 1.0) -> None:
    write_folder(
        folder, tracing_data(Tracing(protocol="http/protobuf", endpoint=url, sampling_rate=rate))
    )


async def test_the_queue_proxy_traces_its_wait_and_forward_and_the_model_joins(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "observability"
    model_tracer = Tracer("model")
    async with otlp_receiver() as receiver:
        model_tracer.configure(
            Tracing(protocol="http/protobuf", endpoint=receiver.url, sampling_rate=1)
        )
        tracing_on(folder, receiver.url)
        async with (
            run_app(traced_model_app(model_tracer, 0.1)) as (_, port),
            started(port, container_concurrency=1, observability_dir=str(folder)) as qp,
            aiohttp.ClientSession() as session,
        ):
            await asyncio.wait_for(qp.readiness.became_ready.wait(), 5)
            await poll_until(lambda: qp.tracer.on)
            url = f"http://127.0.0.1:{qp.serving_port}/v1/models/iris:predict"

            async def post(trace: str) -> tuple[int, float]:
                started_at = time.monotonic()
                headers = {"traceparent": f"00-{trace}-{PARENT}-01"}
                async with session.post(url, json={"instances": [[1]]}, headers=headers) as r:
                    await r.read()
                    return r.status, time.monotonic() - started_at

            traces = [f"{k:032x}" for k in range(1, 3)]
            answers = await asyncio.gather(*(post(t) for t in traces))  # CC 1: one waits
            assert [a[0] for a in answers] == [200, 200]
            await asyncio.to_thread(model_tracer.flush)
            await asyncio.to_thread(qp.tracer.flush)
            await receiver.until(lambda spans: len(spans) >= 8)  # 2 x 4
        model_tracer.close()
    for trace, (_, elapsed) in zip(traces, answers, strict=True):
        spans = {s.name: s for s in receiver.spans if s.trace_id == trace}
        server, forward, model = spans["queue_proxy"], spans["queue_forward"], spans["model"]
        assert server.parent_id == PARENT
        assert forward.parent_id == server.span_id
        assert model.parent_id == forward.span_id  # the model server joined through traceparent
        assert server.service == "queue-proxy"
        assert server.attributes["http.request.method"] == "POST"
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["zeroserve.model"] == "iris"
        assert server.attributes["zeroserve.revision"] == "iris-00001"
        assert server.attributes["k8s.pod.name"] == "pod-1"
        assert forward.attributes["server.port"] == qp.settings.user_port
        # durations: the model's 100 ms within the forward, within the request, within what
        # the client measured
        assert 0.1 <= model.seconds <= forward.seconds <= server.seconds <= elapsed + 0.005
    waits = sorted(w.seconds for w in receiver.named("queue_wait"))
    assert len(waits) == 2
    assert waits[0] < 0.05 <= waits[1]  # the second request waited for the first's slot


async def test_tracing_turns_on_and_off_without_a_restart_and_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "observability"
    async with (
        otlp_receiver() as receiver,
        run_app(traced_model_app(Tracer("model"), 0)) as (_, port),
        started(port, observability_dir=str(folder)) as qp,
    ):
        await asyncio.wait_for(qp.readiness.became_ready.wait(), 5)
        assert not qp.tracer.on  # no folder yet: off
        tracing_on(folder, receiver.url)
        await poll_until(lambda: qp.tracer.on)
        write_folder(folder, {SAMPLING_RATE: "7"})  # invalid: the last good stays
        await asyncio.sleep(1.5)
        assert qp.tracer.on
        assert qp.tracer.tracing.endpoint == receiver.url
        write_folder(folder, {PROTOCOL: "none"})
        await poll_until(lambda: not qp.tracer.on)


# --- zeroserve up: the activator, a cold start, the queue-proxy --------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_cold_start_is_traced_through_the_activator_and_the_queue_proxy(
    tmp_path: Path,
) -> None:
    """``zeroserve up`` with tracing on and the built-in model server at zero: one request's
    trace holds the activator's spans, the cold start's steps in order, the queue-proxy's."""
    model = ROOT / "examples" / "models" / "iris-sklearn" / "model.joblib"
    async with otlp_receiver() as receiver:
        spec = "\n".join(
            [
                "observability:",
                "  tracing-protocol: http/protobuf",
                f"  tracing-endpoint: {receiver.url}",
                '  tracing-sampling-rate: "1"',
                "services:",
                "  - name: iris",
                "    revisions:",
                "      - name: iris-v1",
                f"        predictor: {{format: sklearn, storageUri: {model}}}",
                "",
            ]
        )
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(spec)
        async with (
            zeroserve_up(spec_path, tmp_path / "up.log") as rt,
            aiohttp.ClientSession() as session,
        ):
            headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
            body = {"instances": [[6.8, 2.8, 4.8, 1.4]]}
            async with session.post(
                f"{rt.url}/v1/models/iris:predict", json=body, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"predictions": [1]}

            def complete(spans: list[Received]) -> bool:
                names = {s.name for s in spans if s.trace_id == TRACE}
                return {"activator", "cold_start", "queue_proxy", "queue_forward"} <= names

            await receiver.until(complete, within=30)
    spans = {s.name: s for s in receiver.spans if s.trace_id == TRACE}
    activator, wait, cold = spans["activator"], spans["throttler_try"], spans["cold_start"]
    proxy, queue, forward = spans["activator_proxy"], spans["queue_proxy"], spans["queue_forward"]
    assert activator.parent_id == PARENT
    assert wait.parent_id == proxy.parent_id == activator.span_id
    assert cold.parent_id == wait.span_id
    assert queue.parent_id == proxy.span_id  # across processes, by traceparent
    assert forward.parent_id == queue.span_id
    assert (activator.service, queue.service) == ("activator", "queue-proxy")
    assert wait.attributes["zeroserve.cold"] is True
    assert activator.attributes["zeroserve.revision"] == "iris-v1"
    assert activator.attributes["zeroserve.model"] == "iris"
    events = [name for name, _, _ in cold.events]
    assert events[:2] == ["scale_decision", "replica_started"]
    assert events[-1] == "ready"
    assert {"imports", "load"} <= set(events)  # the built-in server reports its phases
    times = [t for _, t, _ in cold.events]
    assert times == sorted(times)
    # the wait covers the cold start; the request covers all
    assert activator.start_ns <= wait.start_ns <= wait.end_ns <= proxy.start_ns
    assert proxy.end_ns <= activator.end_ns
    # across processes: the queue-proxy's span within the activator's forward to it (its end
    # comes after its last byte went out, which the activator may have read a moment before)
    slack = 5_000_000
    assert proxy.start_ns - slack <= queue.start_ns <= queue.end_ns <= proxy.end_ns + slack
    assert cold.seconds > 0.1


# --- Kubernetes: render, deploy/, and the activator following its ConfigMap ------------------


def test_render_gives_each_queue_proxy_its_namespaces_config_observability() -> None:
    raw = {
        "observability": {PROTOCOL: "http/protobuf", ENDPOINT: "http://otel.obs:4318/v1/traces"},
        "services": [
            {"name": "a", "namespace": "team-a", "revisions": [{"name": "a-1", "command": ["m"]}]},
            {"name": "b", "revisions": [{"name": "b-1", "command": ["m"]}]},
        ],
    }
    objs = render(parse_spec(raw), image="zeroserve:test")
    maps = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == CONFIGMAP]
    assert sorted(m["metadata"]["namespace"] for m in maps) == ["default", "team-a"]
    assert parse_tracing(maps[0]["data"]).endpoint == "http://otel.obs:4318/v1/traces"
    for dep in (o for o in objs if o["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        [qp] = [c for c in pod["containers"] if c["name"] == "queue-proxy"]
        env = {e["name"]: e.get("value") for e in qp["env"]}
        [mount] = qp["volumeMounts"]
        assert env["QUEUE_OBSERVABILITY_DIR"] == mount["mountPath"]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"] == {"name": CONFIGMAP, "optional": True}
    without = render(parse_spec({**raw, "observability": {}}), image="zeroserve:test")
    assert not [o for o in without if o["metadata"]["name"] == CONFIGMAP]


def test_deploy_has_the_activators_config_observability_and_it_is_valid() -> None:
    [doc] = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "config-observability.yaml").read_text())
        if d
    ]
    assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == (
        CONFIGMAP,
        "zeroserve-system",
    )
    tracing = parse_tracing(doc["data"], strict=False)
    assert not tracing.enabled  # off until edited
    assert tracing.sampling_rate == 0.1
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert "config-observability.yaml" in kustomization["resources"]


async def test_the_activator_follows_config_observability_without_a_restart() -> None:
    config = MemoryConfig({})
    act = build_activator(
        MemoryRoutes(), MemoryEndpoints(), InProcessStatSink(lambda _: None), observability=config
    )
    try:
        assert not act.tracer.on
        on = {PROTOCOL: "http/protobuf", ENDPOINT: "http://127.0.0.1:9/v1/traces"}
        config.set(on)
        assert act.tracer.on
        config.set({**on, SAMPLING_RATE: "-1"})  # rejected: the last good stays
        assert act.tracer.on
        assert act.tracer.tracing.sampling_rate == 0.0
        config.set({PROTOCOL: "none"})
        assert not act.tracer.on
    finally:
        await act.close()


def test_an_inferenceservice_file_may_carry_config_observability_and_config_autoscaler() -> None:
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris"},
        "spec": {"predictor": {"sklearn": {"storageUri": "file:///m"}}},
    }

    def configmap(name: str, data: object) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}

    observability = {PROTOCOL: "http/protobuf", ENDPOINT: "http://127.0.0.1:4318/v1/traces"}
    docs = [
        isvc,
        configmap("config-observability", {**observability, "_example": "...", "metrics-x": "y"}),
        configmap("config-autoscaler", {"stable-window": "30s"}),
    ]
    spec = parse_spec(translate(docs).spec)
    assert dict(spec.observability) == observability
    assert dict(spec.config) == {"stable-window": "30s"}
    with pytest.raises(SpecError) as err:
        parse_spec(translate([isvc, configmap("config-observability", {SAMPLING_RATE: "9"})]).spec)
    assert "observability: tracing-sampling-rate = '9': must be a number within [0, 1]" in (
        err.value.errors
    )
    with pytest.raises(SpecError, match="only v1 ConfigMaps config-autoscaler, config-observab"):
        translate([isvc, configmap("config-network", {})])
