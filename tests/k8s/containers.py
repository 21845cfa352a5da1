"""From a pod's container spec to the process the test node runs, with Kubernetes' environment.

There is no container runtime here, so an image is mapped to a local command, explicitly:

* image ``zeroserve`` (any registry, any tag) is the Dockerfile's image, run from this checkout:
  its ``ENTRYPOINT ["python", "-m"]``, ``CMD ["activator"]`` and ``ENV`` (``PYTHONPATH=/app``…),
  with ``python`` = this venv's interpreter and ``/app`` = the repository root (the image's
  ``/app`` holds ``examples/``, its site-packages the rest: here both are the checkout). So
  deploy/'s ``python -m activator --kubernetes``, ``python -m autoscaler --kubernetes``, and the
  revision's ``python -m examples.iris_server`` and ``python -m queue_proxy`` run as they are.

Any other image is refused (the pod's container then waits with reason ``ErrImagePull``, as a
kubelet reports an image it cannot pull). ``command`` replaces the entrypoint and drops the image's
``CMD``; ``args`` replaces ``CMD``; ``$(VAR)`` in either expands from the container's environment.

The environment is what a kubelet gives: the image's ``ENV``, ``HOSTNAME``, the ``kubernetes``
Service's ``KUBERNETES_SERVICE_HOST``/``_PORT``, the service links of the pod's namespace unless
``enableServiceLinks: false`` (``<NAME>_SERVICE_HOST``, ``<NAME>_PORT``… as Docker links spell them),
then the container's ``env`` in order, with ``valueFrom.fieldRef`` (the downward API: the pod's name,
namespace, uid, IPs, node, service account, labels and annotations) and ``$(VAR)`` references to
earlier entries. ``KUBECONFIG`` names the pod's service-account kubeconfig (kubelet.py): the
in-cluster credentials in a form a process outside a mount namespace can find.

Not applied (no runtime to apply them): ``securityContext`` (the processes run as the test's user),
resources, images' own file systems.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# The Dockerfile's runtime stage, with /app = the checkout.
IMAGE_ENTRYPOINT = ["python", "-m"]
IMAGE_CMD = ["activator"]
IMAGE_ENV = {
    "PATH": f"{Path(PYTHON).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": str(REPO),
}

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class ImageError(ValueError):
    """An image this test node has no mapping for (the kubelet's ErrImagePull)."""


def image_name(image: str) -> str:
    """``registry:5000/team/zeroserve:0.1.0@sha256:…`` → ``zeroserve``."""
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a known name is replaced, an unknown one is kept, ``$$``
    is a literal ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


def argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The process to run for ``container``, by the table above."""
    if image_name(str(container.get("image", ""))) != "zeroserve":
        raise ImageError(f"image {container.get('image')!r}: this node runs only 'zeroserve'")
    command = list(container.get("command") or IMAGE_ENTRYPOINT)
    # args replace the image's CMD; a command drops it
    default_args = [] if container.get("command") else list(IMAGE_CMD)
    args = list(container["args"] or []) if "args" in container else default_args
    out = [expand(str(a), env) for a in command + args]
    if out and out[0] in ("python", "python3"):
        out[0] = PYTHON
    return out


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's ``fieldRef.fieldPath`` values."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ValueError(f"fieldRef {path!r} is not supported by the downward API")


def service_links(services: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The Docker-link-style variables a kubelet sets for every Service of the pod's namespace."""
    env: dict[str, str] = {}
    for svc in services:
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        first = ports[0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            prefix = f"{name}_PORT_{port['port']}_{proto}"
            env[prefix] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


def environment(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    services: Sequence[Mapping[str, Any]],
    kubernetes_service: tuple[str, int],
    kubeconfig: Path | None,
) -> dict[str, str]:
    """The container's environment, in the kubelet's order (later entries win)."""
    spec = pod.get("spec") or {}
    env = dict(IMAGE_ENV)
    env["HOSTNAME"] = pod["metadata"]["name"]
    env["HOME"] = "/"
    if spec.get("enableServiceLinks", True):
        env.update(service_links(services))
    host, port = kubernetes_service
    env.update(service_links([{"metadata": {"name": "kubernetes"},
                               "spec": {"clusterIP": host, "ports": [{"name": "https", "port": port}]}}]))  # fmt: skip
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    for item in container.get("env") or []:
        if "value" in item or "valueFrom" not in item:
            env[item["name"]] = expand(str(item.get("value", "")), env)
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = field_ref(pod, item["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise ValueError(f"env {item['name']}: only value and fieldRef are supported here")
    return env
