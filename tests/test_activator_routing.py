"""Routing by Host and by model-protocol path, traffic splits and tags."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from activator.routing import RouteNotFoundError, Router, RouteTable, model_name, parse_host
from cluster.memory import MemoryRoutes
from cluster.spec import Revision, Service, TrafficTarget


def service(
    name: str, split: dict[str, int], *, ns: str = "default", tags: dict[str, str] | None = None
) -> Service:
    tags = tags or {}
    names = list(dict.fromkeys([*split, *tags.values()]))
    revisions = tuple(Revision(namespace=ns, service=name, name=r) for r in names)
    traffic = [TrafficTarget(revision=r, percent=p) for r, p in split.items()]
    traffic += [TrafficTarget(revision=r, percent=0, tag=t) for t, r in tags.items()]
    return Service(namespace=ns, name=name, revisions=revisions, traffic=tuple(traffic))


IRIS = service("iris", {"iris-v1": 90, "iris-v2": 10}, tags={"canary": "iris-v3"})
BERT = service("bert", {"bert-1": 100}, ns="nlp")


def table(*services: Service, seed: int = 1) -> RouteTable:
    return RouteTable({(s.namespace, s.name): s for s in services}, random.Random(seed))


@pytest.mark.parametrize(
    ("host", "want"),
    [
        pytest.param("iris.default.example.com", ("iris", "default"), id="full"),
        pytest.param("iris.default", ("iris", "default"), id="short"),
        pytest.param("iris.default.svc.cluster.local", ("iris", "default"), id="svc"),
        pytest.param("Iris.Default.example.com:8080", ("iris", "default"), id="port-and-case"),
        pytest.param("localhost:8080", None, id="single-label"),
        pytest.param("127.0.0.1:8080", None, id="ipv4"),
        pytest.param("[::1]:8080", None, id="ipv6"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_host(host: str, want: tuple[str, str] | None) -> None:
    assert parse_host(host) == want


@pytest.mark.parametrize(
    ("target", "want"),
    [
        pytest.param("/v1/models/iris:predict", "iris", id="v1-predict"),
        pytest.param("/v1/models/iris:explain", "iris", id="v1-explain"),
        pytest.param("/v1/models/iris", "iris", id="v1-metadata"),
        pytest.param("/v2/models/iris/infer", "iris", id="v2-infer"),
        pytest.param("/v2/models/iris", "iris", id="v2-metadata"),
        pytest.param("/v2/models/iris/ready", "iris", id="v2-ready"),
        pytest.param("/v2/models/iris/versions/3/infer?x=1", "iris", id="v2-version"),
        pytest.param("/v1/models/iris:unknown", None, id="v1-unknown-verb"),
        pytest.param("/predict", None, id="other"),
    ],
)
def test_model_name(target: str, want: str | None) -> None:
    assert model_name(target) == want


def test_split_ratio_90_10() -> None:
    t = table(IRIS)
    counts = Counter(
        t.resolve("iris.default.example.com", "/").revision.name for _ in range(10_000)
    )
    assert counts.keys() == {"iris-v1", "iris-v2"}  # the 0 % tagged revision only by tag
    assert 8800 <= counts["iris-v1"] <= 9200, counts


def test_tag_by_host() -> None:
    route = table(IRIS).resolve("canary-iris.default.example.com", "/")
    assert route.revision.name == "iris-v3"
    assert route.tag == "canary"


def test_path_in_default_namespace() -> None:
    route = table(IRIS, BERT).resolve("localhost:8080", "/v1/models/iris:predict")
    assert route.service.name == "iris"


def test_path_in_namespace_named_by_host() -> None:
    route = table(IRIS, BERT).resolve("models.nlp.example.com", "/v2/models/bert/infer")
    assert route.revision.name == "bert-1"


def test_host_wins_over_path() -> None:
    route = table(IRIS, BERT).resolve("bert.nlp.example.com", "/v1/models/iris:predict")
    assert route.service.name == "bert"


@pytest.mark.parametrize(
    ("host", "target", "message"),
    [
        pytest.param("nope.default.example.com", "/", "service default/nope not found", id="host"),
        pytest.param("localhost", "/v1/models/nope:predict", "service default/nope", id="path"),
        pytest.param("localhost", "/", "no service named by host 'localhost'", id="neither"),
    ],
)
def test_not_found_names_what(host: str, target: str, message: str) -> None:
    with pytest.raises(RouteNotFoundError, match=message):
        table(IRIS).resolve(host, target)


def test_missing_revision_and_no_percent() -> None:
    broken = Service(
        namespace="default",
        name="x",
        revisions=(),
        traffic=(TrafficTarget(revision="x-1", percent=100),),
    )
    with pytest.raises(RouteNotFoundError, match="revision default/x-1 of service default/x"):
        table(broken).resolve("x.default", "/")
    idle = service("y", {"y-1": 0})
    with pytest.raises(RouteNotFoundError, match="no revision with a traffic percent"):
        table(idle).resolve("y.default", "/")


def test_router_follows_route_changes() -> None:
    routes = MemoryRoutes([IRIS])
    seen: list[int] = []
    router = Router(routes, rng=random.Random(1), on_change=lambda t: seen.append(len(t)))
    before = router.table
    routes.set_services([IRIS, service("iris2", {"a": 100})])
    assert router.resolve("iris2.default", "/").revision.name == "a"
    assert before.resolve("iris.default", "/").service.name == "iris"  # old snapshot intact
    assert seen == [2]
    router.close()
    routes.set_services([])
    assert len(router.table) == 2
