"""Payload logging's annotations in each written form (cluster.payload_logging): the spec file, the
InferenceService ``spec.predictor.logger``, the rendered Deployment (annotations and the
queue-proxy's environment, which must agree), the queue-proxy's environment."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.inferenceservice import read_documents, translate
from cluster.kubernetes.render import render
from cluster.kubernetes.scheme import SchemeError, revision_from_deployment
from cluster.payload_logging import (
    ENV,
    MODE,
    URL,
    LoggerError,
    PayloadLogging,
    logger_env,
    logger_from_env,
    parse_logger,
)
from cluster.spec_loader import SpecError, parse_spec


@pytest.mark.parametrize(
    ("values", "want"),
    [
        pytest.param({}, None, id="off"),
        pytest.param(
            {URL: "http://sink.default/events"},
            PayloadLogging(
                url="http://sink.default/events",
                hostport="sink.default:80",
                target="/events",
                host="sink.default",
            ),
            id="url-only-all",
        ),
        pytest.param(
            {URL: "http://127.0.0.1:9000", MODE: "response"},
            PayloadLogging(
                url="http://127.0.0.1:9000",
                hostport="127.0.0.1:9000",
                target="/",
                host="127.0.0.1:9000",
                mode="response",
            ),
            id="port-and-mode",
        ),
        pytest.param(
            {URL: "https://sink.example.com/v1/events?k=1"},
            PayloadLogging(
                url="https://sink.example.com/v1/events?k=1",
                hostport="sink.example.com:443",
                target="/v1/events?k=1",
                host="sink.example.com",
            ),
            id="https-port-443",
        ),
    ],
)
def test_parse_logger(values: dict[str, str], want: PayloadLogging | None) -> None:
    got = parse_logger(values)
    assert got == want
    assert got is None or got.tls == got.url.startswith("https://")


@pytest.mark.parametrize(
    ("values", "error"),
    [
        pytest.param(
            {URL: "ftp://sink/"},
            "logger.zeroserve.dev/url = 'ftp://sink/': must be an http:// or https:// URL",
            id="scheme",
        ),
        pytest.param(
            {URL: "https://sink:x/"},
            "logger.zeroserve.dev/url = 'https://sink:x/': must be an https:// URL with a valid",
            id="bad-port",
        ),
        pytest.param(
            {URL: "http:///x"},
            "logger.zeroserve.dev/url = 'http:///x': must name a host",
            id="no-host",
        ),
        pytest.param(
            {URL: "http://s/", MODE: "both"},
            "logger.zeroserve.dev/mode = 'both': must be all, request or response",
            id="bad-mode",
        ),
        pytest.param(
            {MODE: "all"},
            "logger.zeroserve.dev/mode: needs logger.zeroserve.dev/url",
            id="mode-alone",
        ),
        pytest.param(
            {"logger.zeroserve.dev/uri": "x"}, "logger.zeroserve.dev/uri: unknown key", id="typo"
        ),
    ],
)
def test_logger_errors_name_the_key(values: dict[str, str], error: str) -> None:
    with pytest.raises(LoggerError) as caught:
        parse_logger(values)
    assert any(e.startswith(error) for e in caught.value.errors), caught.value.errors


def test_the_environment_names_the_variable() -> None:
    assert logger_from_env({"QUEUE_LOGGER_URL": "http://s:1/"}) is not None
    with pytest.raises(LoggerError, match="QUEUE_LOGGER_MODE = 'x'"):
        logger_from_env({"QUEUE_LOGGER_URL": "http://s:1/", "QUEUE_LOGGER_MODE": "x"})


def _spec(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "iris",
                "revisions": [{"name": "iris-v1", "command": ["m"], "annotations": annotations}],
            }
        ]
    }


def test_the_spec_loader_checks_the_annotations() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec({URL: "ftp://x"}))
    assert caught.value.errors[0].startswith(
        "services[0].revisions[0].annotations: logger.zeroserve.dev/url = 'ftp://x': must be"
    )


def test_render_sets_the_queue_proxys_environment_and_the_scheme_checks_it() -> None:
    ann = {URL: "http://sink.monitoring:8080/", MODE: "request"}
    spec = parse_spec(_spec(ann))
    [dep] = [o for o in render(spec, image="zs:1") if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"][URL] == ann[URL]
    [qp] = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "queue-proxy"]
    env = {e["name"]: e.get("value") for e in qp["env"]}
    assert {k: env[k] for k in ENV.values()} == logger_env(ann)
    assert revision_from_deployment(dep).annotations[URL] == ann[URL]
    # an edit of the annotation that leaves the sidecar's env behind is an error naming both
    dep["metadata"]["annotations"][URL] = "http://other:8080/"
    with pytest.raises(
        SchemeError, match=r"env\[QUEUE_LOGGER_URL\] = 'http://sink.monitoring:8080/'"
    ):
        revision_from_deployment(dep)


def test_an_inferenceservice_logger_becomes_the_annotations() -> None:
    text = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    logger: {url: "http://message-dumper.default/", mode: all}
    sklearn: {storageUri: "s3://models/iris/v1"}
"""
    spec = parse_spec(translate(read_documents(text, "isvc.yaml")).spec)
    [rev] = spec.services[0].revisions
    assert rev.annotations[URL] == "http://message-dumper.default/"
    assert rev.annotations[MODE] == "all"
