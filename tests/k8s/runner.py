"""One container of a test pod (kubelet.py): its process, restarts, probes, hooks and stop.

The rules are a kubelet's; kubelet.py's docstring lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from tests.k8s.containers import REPO, ImageError, argv
from tests.k8s.netns import PodNetwork

log = logging.getLogger("zeroserve.tests.kubelet")

PROBE_USER_AGENT = "kube-probe/1.37"
# A kubelet notices a container's exit when its PLEG relists the runtime's containers, every
# second, and restarts it in the pod sync that follows: the restart comes this long after the
# exit, which is published at once.
RELIST_S = 1.0
Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    # start_new_session: the container's process leads its own group, so its children go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Pod(Protocol):
    """What a container needs of its pod (kubelet.PodWorker)."""

    name: str
    spec: Obj
    dir: Path
    stopping: asyncio.Event

    @property
    def net(self) -> PodNetwork: ...

    @property
    def ip(self) -> str: ...

    @property
    def http(self) -> aiohttp.ClientSession: ...

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]: ...

    def changed(self) -> None: ...

    async def publish(self) -> None: ...


class Container:
    """One container of a pod: its process, restarts, probes and status."""

    def __init__(self, pod: Pod, spec: Obj) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.task: asyncio.Task[None] | None = None
        self.log_path = pod.dir / f"{self.name}.log"

    def status(self) -> Obj:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"zeroserve://{self.proc.pid}" if self.proc else "",
            "ready": self.ready,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.pod.changed()

    async def supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while not self.pod.stopping.is_set():
            try:
                env = self.pod.environment(self.spec)
                cmd = argv(self.spec, env)
            except ImageError as exc:
                self.state = {"waiting": {"reason": "ErrImagePull", "message": str(exc)}}
                self.pod.changed()
                return
            except ValueError as exc:
                self.state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                }
                self.pod.changed()
                return
            with self.log_path.open("ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", self.pod.net.netns, *cmd,
                    env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            started, started_at = loop.time(), now()
            self.state = {"running": {"startedAt": started_at}}
            self.pod.changed()
            probes = [
                asyncio.create_task(self._readiness()),
                asyncio.create_task(self._liveness()),
            ]
            code = await self.proc.wait()
            for p in probes:
                p.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            self.ready = False
            exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
            terminated = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": started_at,
                    "finishedAt": now(),
                }
            }
            self.state = terminated
            await self.pod.publish()  # the exit is in the pod's status before any restart
            policy = self.pod.spec.get("restartPolicy", "Always")
            if (
                self.pod.stopping.is_set()
                or policy == "Never"
                or (policy == "OnFailure" and exit_code == 0)
            ):
                return
            if loop.time() - started >= 600:
                backoff = 0.0
            self.last_state = terminated
            if backoff:
                self.state = {"waiting": {"reason": "CrashLoopBackOff"}}
                self.pod.changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pod.stopping.wait(), RELIST_S + backoff)
            backoff = min(max(2 * backoff, 10.0), 300.0)
            self.restart_count += 1

    async def _readiness(self) -> None:
        probe = self.spec.get("readinessProbe")
        if not probe:
            self._set_ready(True)
            return
        successes = failures = 0
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while True:
            if await self.probe(probe):
                successes, failures = successes + 1, 0
                if successes >= int(probe.get("successThreshold", 1)):
                    self._set_ready(True)
            else:
                successes, failures = 0, failures + 1
                if failures >= int(probe.get("failureThreshold", 3)):
                    self._set_ready(False)
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _liveness(self) -> None:
        probe = self.spec.get("livenessProbe")
        if not probe:
            return
        failures = 0
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        while True:
            failures = 0 if await self.probe(probe) else failures + 1
            if failures >= int(probe.get("failureThreshold", 3)):
                log.warning("liveness failed", extra={"pod": self.pod.name, "container": self.name})
                grace = float(self.pod.spec.get("terminationGracePeriodSeconds", 30))
                # stop() waits for the process, and supervise() (which awaits it too) cancels
                # this task once it exits: shield the stop from that.
                await asyncio.shield(self.stop(asyncio.get_running_loop().time() + grace, False))
                return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def stop(self, deadline: float, pre_stop: bool = True) -> None:
        """preStop (if ``pre_stop``), SIGTERM, SIGKILL at ``deadline`` (loop time)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        loop = asyncio.get_running_loop()
        hook = ((self.spec.get("lifecycle") or {}).get("preStop")) if pre_stop else None
        if hook:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.run_handler(hook), deadline - loop.time())
        signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(0.0, deadline - loop.time()))
        except TimeoutError:
            signal_group(proc, signal.SIGKILL)
            await proc.wait()

    # --- probes and hooks (a kubelet runs them from the node) ---------------------------

    def _port(self, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"container {self.name}: no port named {port!r}")

    async def _http(self, get: Mapping[str, Any], timeout_s: float) -> bool:
        host = get.get("host") or self.pod.ip
        url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{self._port(get['port'])}{get.get('path', '/')}"
        headers = {"User-Agent": PROBE_USER_AGENT, "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self.pod.http.get(url, headers=headers, timeout=timeout) as resp:
            await resp.read()
            return 200 <= resp.status < 400

    async def run_handler(self, handler: Mapping[str, Any], timeout_s: float = 3600) -> bool:
        """A probe's or a lifecycle hook's action; True on success."""
        try:
            if "httpGet" in handler:
                return await self._http(handler["httpGet"], timeout_s)
            if "tcpSocket" in handler:
                port = self._port(handler["tcpSocket"]["port"])
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.pod.ip, port), timeout_s
                )
                writer.close()
                return True
            if "exec" in handler:
                proc = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", self.pod.net.netns, *handler["exec"]["command"],
                    env=self.pod.environment(self.spec), cwd=REPO,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    return await asyncio.wait_for(proc.wait(), timeout_s) == 0
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False
        raise ValueError(f"unsupported handler {sorted(handler)}")

    async def probe(self, probe: Mapping[str, Any]) -> bool:
        return await self.run_handler(probe, float(probe.get("timeoutSeconds", 1)))
