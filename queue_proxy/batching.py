"""Request batching in the queue-proxy: several callers' inference requests joined into one
call to the model server, its answer split back by rows (docs/batching.md).

Which requests: ``POST /v1/models/<m>:predict`` with a JSON ``instances`` list (KServe V1), and
``POST /v2/models/<m>[/versions/<v>]/infer`` with JSON ``inputs`` (Open Inference Protocol V2:
same names, datatypes and trailing shapes, joined along the first dimension). Requests that
cannot share a batch (another path, other parameters or requested outputs, other input names,
datatypes or trailing shapes) go in different batches, each kind with its own queue
(:class:`_Queue`, by :attr:`Member.key`). Anything else passes through as before.

When a batch goes (:class:`Batcher`): at most ``slots`` batches are at the model server at once
(containerConcurrency, 1 when it is 0). ``adaptive`` (the default): a request that finds a
free slot goes at once with whatever waits beside it; while every slot is busy, arrivals
accumulate, and the next batch takes as many rows as the limit allows. The limit follows the
batches' service times (additive increase while batches are full and take less than
max-latency, multiplicative decrease when one takes longer: Clipper's AIMD). ``static``:
KServe's rule, a batch goes when it holds max-batch-size rows or its oldest request has waited
max-latency, whichever comes first.

A request never waits past its own deadline (the revision timeout from its arrival): it is
answered 504 then, batch or not. Failures are per request where they can be: a 4xx for a batch
of several is retried one request at a time, so one bad request does not fail its batch-mates;
an answer with the wrong number of rows is a 502 naming the counts, for each caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.batching import MODE_STATIC, Batching
from dataplane.api import UpstreamConnectError
from dataplane.breaker import Breaker, QueueFullError
from dataplane.client import UpstreamFailedError, fetch
from dataplane.upstream import UpstreamPool

log = logging.getLogger("zeroserve.queue_proxy.batching")

MAX_BODY = 16 * 1024 * 1024
"""A request body larger than this is not batched: it passes through on its own."""
_JSON = (("Content-Type", "application/json"),)
_V1_PATH = re.compile(r"/v1/models/[^/:?#]+:predict")
_V2_PATH = re.compile(r"/v2/models/[^/?#]+(?:/versions/[^/?#]+)?/infer")
_DECREASE = 0.75  # the limit's multiplicative decrease (AIMD)


def batch_path(method: str, target: str) -> bool:
    """Whether a request may be batched by its method and target (its body decides the rest)."""
    if method != "POST":
        return False
    if target.endswith(":predict"):
        return _V1_PATH.fullmatch(target) is not None
    if target.endswith("/infer"):
        return _V2_PATH.fullmatch(target) is not None
    return False


class Answer(NamedTuple):
    """What a batched caller is answered: status, body, content type, and the refusal reason
    the queue-proxy counts when it answered the error itself ("" otherwise)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    refusal: str = ""


class SplitError(ValueError):
    """The model server's answer to a batch cannot be split back by rows; says why."""


# --- the two protocols ---------------------------------------------------------------------


def _flat(data: list[Any]) -> list[Any]:
    """A tensor's data, flattened in row-major order (V2 JSON allows nested or flat lists)."""
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:
        if isinstance(x, list):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Member:
    """One caller's request in the batcher: its rows (and how to put them back), its queue key,
    its arrival and deadline, and the future its answer comes through."""

    __slots__ = (
        "arrived",
        "body",
        "deadline",
        "doc",
        "future",
        "host",
        "key",
        "parts",
        "protocol",
        "queued",
        "rows",
        "target",
    )

    def __init__(
        self,
        protocol: _Protocol,
        target: str,
        body: bytes,
        doc: dict[str, Any],
        key: tuple[object, ...],
        rows: int,
        parts: list[list[Any]],
    ) -> None:
        self.protocol = protocol
        self.target = target
        self.body = body
        self.doc = doc  # the rest of the request (V1: without instances; V2: id, inputs, rest)
        self.key = key
        self.rows = rows
        self.parts = parts  # V1: [instances]; V2: each input's flat data
        self.host = ""
        self.arrived = 0.0
        self.deadline: float | None = None
        self.future: asyncio.Future[Answer] | None = None
        self.queued = False


class _Protocol:
    """How one protocol's requests are read, joined and split."""

    name = ""

    def member(self, target: str, body: bytes) -> Member | None:
        raise NotImplementedError

    def join(self, batch: Sequence[Member]) -> bytes:
        raise NotImplementedError

    def split(self, body: bytes, batch: Sequence[Member]) -> list[bytes]:
        raise NotImplementedError


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class _V1(_Protocol):
    """KServe V1: ``{"instances": [...]}`` in, ``{"predictions": [...]}`` out, one per row."""

    name = "v1"

    def member(self, target: str, body: bytes) -> Member | None:
        doc = _object(body)
        if doc is None:
            return None
        instances = doc.pop("instances", None)
        if not isinstance(instances, list) or not instances:
            return None
        key = ("v1", target, _canon(doc))
        return Member(self, target, body, doc, key, len(instances), [instances])

    def join(self, batch: Sequence[Member]) -> bytes:
        instances: list[Any] = []
        for m in batch:
            instances.extend(m.parts[0])
        return json.dumps({**batch[0].doc, "instances": instances}).encode()

    def split(self, body: bytes, batch: Sequence[Member]) -> list[bytes]:
        doc = _object(body)
        predictions = doc.pop("predictions", None) if doc is not None else None
        if doc is None or not isinstance(predictions, list):
            raise SplitError("the model server's answer to the batch has no predictions list")
        rows = sum(m.rows for m in batch)
        if len(predictions) != rows:
            raise SplitError(
                f"the model server answered {len(predictions)} predictions "
                f"for a batch of {rows} instances"
            )
        out, at = [], 0
        for m in batch:
            part = predictions[at : at + m.rows]
            at += m.rows
            out.append(json.dumps({**doc, "predictions": part}).encode())
        return out


class _V2(_Protocol):
    """Open Inference Protocol V2 (JSON): inputs joined along the first dimension, each output
    split by rows; each caller gets its own ``id`` back."""

    name = "v2"

    def member(self, target: str, body: bytes) -> Member | None:
        doc = _object(body)
        if doc is None:
            return None
        inputs = doc.pop("inputs", None)
        if not isinstance(inputs, list) or not inputs:
            return None
        request_id = doc.pop("id", None)
        rows = -1
        shapes: list[tuple[object, ...]] = []
        parts: list[list[Any]] = []
        for tensor in inputs:
            if not isinstance(tensor, dict):
                return None
            name, datatype = tensor.get("name"), tensor.get("datatype")
            shape, data = tensor.get("shape"), tensor.get("data")
            if not (isinstance(name, str) and isinstance(datatype, str)):
                return None
            if not (isinstance(shape, list) and shape and isinstance(data, list)):
                return None
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                return None
            flat = _flat(data)
            if len(flat) != math.prod(shape) or shape[0] < 1 or rows not in (-1, shape[0]):
                return None  # (the model server says what is wrong with it)
            rows = shape[0]
            shapes.append((name, datatype, tuple(shape[1:]), _canon(tensor.get("parameters"))))
            parts.append(flat)
        rest = _canon(doc)
        if "binary_data" in rest:  # outputs asked for in the binary extension: not split here
            return None
        key = ("v2", target, rest, tuple(shapes))
        kept = {"id": request_id, "inputs": inputs, "rest": doc}
        return Member(self, target, body, kept, key, rows, parts)

    def join(self, batch: Sequence[Member]) -> bytes:
        first = batch[0].doc
        rows = sum(m.rows for m in batch)
        tensors = []
        for i, tensor in enumerate(first["inputs"]):
            data: list[Any] = []
            for m in batch:
                data.extend(m.parts[i])
            joined = {
                "name": tensor["name"],
                "datatype": tensor["datatype"],
                "shape": [rows, *tensor["shape"][1:]],
                "data": data,
            }
            if tensor.get("parameters") is not None:
                joined["parameters"] = tensor["parameters"]
            tensors.append(joined)
        return json.dumps({**first["rest"], "inputs": tensors}).encode()

    def split(self, body: bytes, batch: Sequence[Member]) -> list[bytes]:
        doc = _object(body)
        outputs = doc.pop("outputs", None) if doc is not None else None
        if doc is None or not isinstance(outputs, list):
            raise SplitError("the model server's answer to the batch has no outputs list")
        doc.pop("id", None)
        rows = sum(m.rows for m in batch)
        flats = []
        for tensor in outputs:
            shape = tensor.get("shape") if isinstance(tensor, dict) else None
            data = tensor.get("data") if isinstance(tensor, dict) else None
            if not (isinstance(shape, list) and shape and isinstance(data, list)):
                raise SplitError("an output of the model server's answer has no shape or data")
            name = tensor.get("name")
            if shape[0] != rows:
                raise SplitError(
                    f"output {name!r} of the model server's answer has {shape[0]} rows "
                    f"for a batch of {rows}"
                )
            flat = _flat(data)
            if len(flat) != math.prod(shape):
                raise SplitError(f"output {name!r}: {len(flat)} values for shape {shape}")
            flats.append((tensor, shape, flat, len(flat) // rows if rows else 0))
        out, at = [], 0
        for m in batch:
            tensors = []
            for tensor, shape, flat, per_row in flats:
                tensors.append(
                    {
                        **tensor,
                        "shape": [m.rows, *shape[1:]],
                        "data": flat[at * per_row : (at + m.rows) * per_row],
                    }
                )
            at += m.rows
            mine = {**doc, "outputs": tensors}
            if m.doc["id"] is not None:
                mine["id"] = m.doc["id"]
            out.append(json.dumps(mine).encode())
        return out


_PROTOCOLS: tuple[_Protocol, ...] = (_V1(), _V2())


def read_member(target: str, body: bytes) -> Member | None:
    """The batchable request in ``body`` sent to ``target``, or None to pass it through."""
    protocol = _PROTOCOLS[0] if target.endswith(":predict") else _PROTOCOLS[1]
    return protocol.member(target, body)


# --- the batcher ---------------------------------------------------------------------------


class BatchMetrics:
    """The batcher's instruments, in the queue-proxy's registry."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        names, values = list(labels), list(labels.values())

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(*values)

        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
        seconds = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.requests = histogram(
            "queue_proxy_batch_requests", "Requests per batch sent to the model server.", sizes
        )
        self.rows = histogram(
            "queue_proxy_batch_rows",
            "Rows (V1 instances, V2 first-dimension entries) per batch.",
            sizes,
        )
        self.wait = histogram(
            "queue_proxy_batch_wait_seconds",
            "Time a request waited in the batcher before its batch was sent.",
            seconds,
        )
        self.service = histogram(
            "queue_proxy_batch_service_seconds",
            "Time from a batch being sent to its whole answer.",
            seconds,
        )
        self.retried = Counter(
            "queue_proxy_batch_retried_requests",
            "Requests sent again on their own after their batch got a 4xx.",
            names,
            registry=registry,
        ).labels(*values)
        self.limit = Gauge(
            "queue_proxy_batch_limit_rows",
            "The rows the next batch may take (adaptive: follows the service time).",
            names,
            registry=registry,
        ).labels(*values)


class _Queue:
    """The waiting requests of one kind (one key): FIFO, their rows, and the static timer."""

    __slots__ = ("due", "members", "rows", "timer")

    def __init__(self) -> None:
        self.members: deque[Member] = deque()
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # static: its oldest request has waited max-latency


class Batcher:
    """Joins waiting requests into batches and sends them, at most ``slots`` at a time, each
    on one of the breaker's slots (when there is a breaker: CC > 0)."""

    def __init__(
        self,
        batching: Batching,
        *,
        upstream: str,
        pool: UpstreamPool,
        breaker: Breaker | None,
        metrics: BatchMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.batching = batching
        self.upstream = upstream
        self.pool = pool
        self.breaker = breaker
        # a batch holds one of the breaker's CC slots; without a breaker (CC 0), one at a time
        self.slots = breaker.max_concurrency if breaker is not None else 1
        self.free = self.slots
        self._sender_waiting = False  # a sender waits in the breaker's queue for a slot
        # Knative's breaker queues 10 x CC requests; here 10 batches' worth per slot
        self.max_queued = 10 * self.slots * batching.max_batch_size
        self.queued = 0
        self.metrics = metrics
        self.clock = clock
        self.static = batching.mode == MODE_STATIC
        self.limit = batching.max_batch_size  # rows (adaptive: moved by AIMD)
        metrics.limit.set(self.limit)
        self._queues: dict[tuple[object, ...], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, member: Member) -> Answer:
        """Queue ``member`` and wait for its answer (or its deadline: TimeoutError)."""
        if self.queued >= self.max_queued:
            raise QueueFullError  # (the breaker's refusal: the same 503)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        member.future = future
        q = self._queues.get(member.key)
        if q is None:
            q = self._queues[member.key] = _Queue()
        q.members.append(member)
        q.rows += member.rows
        member.queued = True
        self.queued += 1
        if self.static and len(q.members) == 1:
            self._arm(member.key, q)
        self._pump()
        try:
            async with asyncio.timeout_at(member.deadline):
                return await future
        finally:
            if member.queued:  # its deadline passed, or its client left, while it waited
                self._drop(member)

    def close(self) -> None:
        for q in self._queues.values():
            if q.timer is not None:
                q.timer.cancel()
        for task in self._tasks:
            task.cancel()

    # --- forming batches ---
    def _arm(self, key: tuple[object, ...], q: _Queue) -> None:
        """Static: the queue is due when its oldest request has waited max-latency (or sooner,
        at that request's own deadline)."""
        head = q.members[0]
        when = head.arrived + self.batching.max_latency_s
        if head.deadline is not None:
            when = min(when, head.deadline)
        q.timer = asyncio.get_running_loop().call_at(when, self._due, key)

    def _due(self, key: tuple[object, ...]) -> None:
        q = self._queues.get(key)
        if q is not None:
            q.timer = None
            q.due = True
            self._pump()

    def _drop(self, member: Member) -> None:
        q = self._queues.get(member.key)
        member.queued = False
        self.queued -= 1
        if q is None:
            return
        q.members.remove(member)
        q.rows -= member.rows
        if not q.members:
            self._forget(member.key, q)

    def _forget(self, key: tuple[object, ...], q: _Queue) -> None:
        if q.timer is not None:
            q.timer.cancel()
        del self._queues[key]

    def _ready(self) -> tuple[tuple[object, ...], _Queue] | None:
        """The queue whose oldest request came first, among those that may send now."""
        best: tuple[tuple[object, ...], _Queue] | None = None
        for key, q in self._queues.items():
            if self.static and not q.due and q.rows < self.batching.max_batch_size:
                continue
            if best is None or q.members[0].arrived < best[1].members[0].arrived:
                best = (key, q)
        return best

    def _take(self) -> tuple[list[Member], int] | None:
        """The next batch out of the queues (None if none may go now), and its rows."""
        ready = self._ready()
        if ready is None:
            return None
        key, q = ready
        limit = self.batching.max_batch_size if self.static else self.limit
        batch = [q.members.popleft()]
        rows = batch[0].rows
        while q.members and rows + q.members[0].rows <= limit:
            m = q.members.popleft()
            batch.append(m)
            rows += m.rows
        q.rows -= rows
        for m in batch:
            m.queued = False
        self.queued -= len(batch)
        if not q.members:
            self._forget(key, q)
        elif self.static:  # the rest waits on its own oldest request
            q.due = False
            if q.timer is not None:
                q.timer.cancel()
            self._arm(key, q)
        return batch, rows

    def _pump(self) -> None:
        """Send what may go. With a breaker, a batch takes one of its slots: free now, the
        batch goes at once; else one sender waits in the breaker's queue, in turn with the
        requests that pass through, and takes the batch when it has the slot (so it holds
        what arrived meanwhile)."""
        breaker = self.breaker
        while self.free > 0 and not self._sender_waiting and self._ready() is not None:
            release = None
            if breaker is not None:
                release = breaker.reserve()
                if release is None:
                    self._sender_waiting = True
                    self._spawn(self._send_in_turn(breaker))
                    return
            taken = self._take()
            assert taken is not None
            self._spawn(self._send(*taken, release))

    def _spawn(self, send: Coroutine[Any, Any, None]) -> None:
        self.free -= 1
        task = asyncio.get_running_loop().create_task(send)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_in_turn(self, breaker: Breaker) -> None:
        taken = None
        try:
            async with breaker.maybe():
                self._sender_waiting = False
                taken = self._take()  # (None: what was ready left at its deadline meanwhile)
                if taken is not None:
                    await self._send(*taken, None, pump=False)
        except QueueFullError as exc:  # the breaker's queue is full of passing requests
            taken = self._take()
            if taken is not None:
                answer = Answer(503, f"{exc}\n".encode(), "text/plain", "queue_full")
                _answer_all(taken[0], answer)
        finally:
            self._sender_waiting = False
            self.free += 1
            self._pump()

    async def _send(
        self,
        batch: list[Member],
        rows: int,
        release: Callable[[], None] | None,
        pump: bool = True,
    ) -> None:
        sent = self.clock()
        m = self.metrics
        m.requests.observe(len(batch))
        m.rows.observe(rows)
        for member in batch:
            m.wait.observe(sent - member.arrived)
        try:
            await self._exchange(batch, rows, sent)
        except Exception as exc:  # (a bug: every caller still gets an answer)
            log.exception("batch failed", extra={"target": batch[0].target})
            _answer_all(batch, Answer(500, f"batch failed: {exc}\n".encode(), "text/plain"))
        finally:
            if release is not None:
                release()
            if pump:
                self.free += 1
                self._pump()

    async def _exchange(self, batch: list[Member], rows: int, sent: float) -> None:
        first = batch[0]
        body = first.body if len(batch) == 1 else first.protocol.join(batch)
        deadlines = [b.deadline for b in batch]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        answer = await self._call(first.target, first.host, body, deadline)
        if answer.refusal:
            _answer_all(batch, answer)
            return
        took = self.clock() - sent
        self.metrics.service.observe(took)
        self._adapt(rows, took)
        status = answer.status
        if 200 <= status < 300 and len(batch) > 1:
            try:
                bodies = first.protocol.split(answer.body, batch)
            except SplitError as exc:
                _answer_all(
                    batch,
                    Answer(502, f"batch failed: {exc}\n".encode(), "text/plain", "upstream_error"),
                )
                return
            for member, part in zip(batch, bodies, strict=True):
                _answer(member, Answer(status, part, answer.content_type))
        elif 400 <= status < 500 and len(batch) > 1:
            # one bad request must not fail its batch-mates: each on its own, one at a time
            for member in batch:
                if member.future is None or member.future.done():
                    continue
                self.metrics.retried.inc()
                _answer(
                    member,
                    await self._call(member.target, member.host, member.body, member.deadline),
                )
        else:
            _answer_all(batch, answer)

    async def _call(self, target: str, host: str, body: bytes, deadline: float | None) -> Answer:
        try:
            async with asyncio.timeout_at(deadline):
                r = await fetch(self.pool, self.upstream, "POST", target, _JSON, body, host=host)
        except UpstreamConnectError as exc:
            return Answer(
                502, f"upstream connect error: {exc}\n".encode(), "text/plain", "upstream_connect"
            )
        except UpstreamFailedError as exc:
            return Answer(502, f"upstream error: {exc}\n".encode(), "text/plain", "upstream_error")
        except TimeoutError:
            return Answer(504, b"request timeout\n", "text/plain", "timeout")
        return Answer(r.status, r.body, r.header("content-type") or "application/json")

    def _adapt(self, rows: int, took: float) -> None:
        """Adaptive: additive increase while full batches finish within max-latency,
        multiplicative decrease when one takes longer."""
        if self.static:
            return
        if took > self.batching.max_latency_s:
            self.limit = max(1, math.floor(self.limit * _DECREASE))
        elif rows >= self.limit:
            self.limit = min(self.batching.max_batch_size, self.limit + 1)
        else:
            return
        self.metrics.limit.set(self.limit)


def _answer(member: Member, answer: Answer) -> None:
    if member.future is not None and not member.future.done():
        member.future.set_result(answer)


def _answer_all(batch: Sequence[Member], answer: Answer) -> None:
    for member in batch:
        _answer(member, answer)
