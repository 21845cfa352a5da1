"""The probe answers of both proxies, and what marks a request as a probe (reference §3.2,
§3.4, §4.1, §7). Probes are answered at once, never forwarded nor counted.

What marks a probe (each proxy's handler reads these in its one pass over a request's headers,
so that an ordinary request pays for no call here):

* ``K-Network-Probe``: ``probe`` from the KIngress prober, ``queue`` (the queue-proxy's health),
  ``activator`` (the autoscaler's check that an activator is in the path);
* a health check: a ``User-Agent`` that starts with one of a proxy's health-check agents, or a
  non-empty ``K-Kubelet-Probe`` (Knative's ``IsKubeletProbe``, for both proxies; the
  queue-proxy took an empty one for a health check too before this module, Knative does not).

What each proxy answers, as Knative's does:

**Both**, the KIngress prober's ``K-Network-Probe: probe`` (:func:`kingress_probe`): 200 with
its ``K-Network-Hash`` echoed, 400 ``no K-Network-Hash header`` without one, 503 while draining
(the body is each proxy's draining body below).

**The queue-proxy** (Knative's drainer, with ``health.ProbeHandler`` as its health check):

* a health check is one of :data:`DRAINER_AGENTS`: the kubelet's ``kube-probe/``, and the
  ``Knative-Activator-Probe`` and ``Knative-Autoscaling-Probe`` agents (the drainer's
  ``HealthCheckUAPrefixes``: the activator probes pods directly and must see a draining pod fail
  at once; the autoscaler's probe of a revision's service reaches the pods when the activator is
  not in the path), or any ``K-Network-Probe`` other than ``probe`` (zeroserve's: so that such a
  probe is answered here, never forwarded to the model server);
* its answer (:func:`queue_health`): 400 ``unexpected probe header value: <v>`` for a
  ``K-Network-Probe`` other than ``queue``; 503 ``shutting down`` while draining; 503
  ``model server not ready`` until the model server's readiness probe passes; else 200
  ``queue`` (the body the activator's probe of a pod expects).

**The activator** (Knative's ``HealthHandler``, then its ``ProbeHandler``):

* a health check is only the kubelet's: :data:`KUBELET_AGENTS` (``kube-probe/``), or a
  non-empty ``K-Kubelet-Probe``. Nothing probes an activator with a ``Knative-*-Probe`` agent
  but the autoscaler, which sends ``K-Network-Probe: activator`` along: that has its own answer;
* its health answer (:func:`activator_health`): 503 ``draining`` while draining; 500 ``not
  connected to the autoscaler`` while its stats cannot reach the autoscaler (its scale-from-zero
  signal would be lost); else 200 ``ok``. The same answers ``/healthz`` when no route matches;
* a non-empty ``K-Network-Probe`` (:func:`activator_probe`): ``probe`` as above, ``activator``
  200 ``activator``, any other 400 ``unexpected probe header value: <v>``.

So the two differ in the health check's user agents and answers because they are different
checks: the queue-proxy's is the pod's readiness (is the model server up, is the pod draining),
asked by the kubelet, the activator and the autoscaler; the activator's is whether it can take
traffic (is it draining, can it signal the autoscaler), asked by the kubelet only.
"""

from __future__ import annotations

from dataplane.api import Exchange

NETWORK_PROBE = "K-Network-Probe"
NETWORK_HASH = "K-Network-Hash"
KUBELET_PROBE = "K-Kubelet-Probe"

# the values of K-Network-Probe
PROBE_KINGRESS = "probe"
PROBE_QUEUE = "queue"
PROBE_ACTIVATOR = "activator"

# user agents of health checks: the kubelet's (kube-probe/1.30), the activator's probe of a
# pod, the autoscaler's probe of the activator
KUBE_PROBE_AGENT = "kube-probe/"
ACTIVATOR_AGENT = "Knative-Activator-Probe"
AUTOSCALING_AGENT = "Knative-Autoscaling-Probe"
# what the queue-proxy counts as a health check (Knative's drainer with HealthCheckUAPrefixes)
DRAINER_AGENTS = (KUBE_PROBE_AGENT, ACTIVATOR_AGENT, AUTOSCALING_AGENT)
# what the activator counts as one (Knative's HealthHandler: network.IsKubeletProbe)
KUBELET_AGENTS = (KUBE_PROBE_AGENT,)

# the bodies of each proxy's 503 while it drains
QUEUE_DRAINING = b"shutting down\n"
ACTIVATOR_DRAINING = b"draining\n"


def bad_probe(ex: Exchange, probe: str) -> None:
    """400: a ``K-Network-Probe`` this proxy does not answer."""
    ex.respond_now(400, b"unexpected probe header value: " + probe.encode() + b"\n")


def kingress_probe(ex: Exchange, *, draining: bool, draining_body: bytes) -> None:
    """The KIngress prober's ``K-Network-Probe: probe``: echo its ``K-Network-Hash``."""
    probe_hash = ex.header(NETWORK_HASH)
    if draining:
        ex.respond_now(503, draining_body)
    elif not probe_hash:
        ex.respond_now(400, b"no K-Network-Hash header\n")
    else:
        ex.respond_now(200, b"", ((NETWORK_HASH, probe_hash),))


def queue_health(ex: Exchange, probe: str | None, *, draining: bool, ready: bool) -> None:
    """The queue-proxy's health answer (§3.4) to a health check or a ``K-Network-Probe``
    (``probe``, None for a health check without one) other than ``probe``."""
    if probe is not None and probe != PROBE_QUEUE:
        bad_probe(ex, probe)
    elif draining:
        ex.respond_now(503, QUEUE_DRAINING)
    elif not ready:
        ex.respond_now(503, b"model server not ready\n")
    else:
        ex.respond_now(200, b"queue")


def activator_health(ex: Exchange, *, draining: bool, connected: bool) -> None:
    """The activator's health answer (Knative's ``HealthHandler``): fails while draining, and
    while its stats cannot reach the autoscaler (``connected``: the websocket is up), so no new
    traffic comes to an activator whose scale-from-zero signal would be lost."""
    if draining:
        ex.respond_now(503, ACTIVATOR_DRAINING)
    elif not connected:
        ex.respond_now(500, b"not connected to the autoscaler\n")
    else:
        ex.respond_now(200, b"ok\n")


def activator_probe(ex: Exchange, probe: str, *, draining: bool) -> None:
    """The activator's answer to a non-empty ``K-Network-Probe`` (Knative's probe handlers)."""
    if probe == PROBE_KINGRESS:
        kingress_probe(ex, draining=draining, draining_body=ACTIVATOR_DRAINING)
    elif probe == PROBE_ACTIVATOR:
        ex.respond_now(200, b"activator")
    else:
        bad_probe(ex, probe)
