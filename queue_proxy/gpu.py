"""GPU utilisation and memory from NVML (``nvidia-ml-py``), sampled in a thread.

Without NVML (no driver, no GPU, as on CPU machines) the GPU metrics are absent and one log line
says why. Tests pass a fake module with the same functions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from queue_proxy.metrics import QueueMetrics

log = logging.getLogger("zeroserve.queue_proxy.gpu")


# Imported with this module (~10 ms), not when a QueueProxy is built: the local runtime's zygote
# imports the queue-proxy once and forks it, so each forked queue-proxy starts without paying it.
try:
    import pynvml

    _pynvml: Any = pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency, but optional at run time
    _pynvml = None


def load_nvml() -> Any:
    """The ``pynvml`` module, or None if it cannot be imported."""
    return _pynvml


class GpuMonitor:
    """Samples every GPU NVML shows this container (the device plugin limits them to the pod's)."""

    def __init__(self, nvml: Any, metrics: QueueMetrics) -> None:
        self._nvml: Any = nvml
        self._metrics = metrics
        self._handles: list[Any] = []
        self.enabled = False
        self.disabled_reason = ""

    def _init(self) -> None:
        nv = self._nvml
        if nv is None:
            raise RuntimeError("nvidia-ml-py (pynvml) is not installed")
        nv.nvmlInit()
        count = int(nv.nvmlDeviceGetCount())
        if count == 0:
            raise RuntimeError("NVML reports no GPU")
        self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    async def start(self) -> bool:
        """Initialise NVML off the event loop; False (and one log line) when unavailable."""
        try:
            await asyncio.to_thread(self._init)
        except Exception as exc:
            self.disabled_reason = f"{type(exc).__name__}: {exc}"
            log.info("gpu metrics disabled", extra={"reason": self.disabled_reason})
            return False
        self.enabled = True
        log.info("gpu metrics enabled", extra={"gpus": len(self._handles)})
        return True

    def _sample(self) -> list[tuple[int, float, float, float]]:
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append((i, float(util.gpu) / 100.0, float(mem.used), float(mem.total)))
        return out

    async def sample(self) -> None:
        m = self._metrics
        for i, util, used, total in await asyncio.to_thread(self._sample):
            labels = (*m.gpu_labels, str(i))
            m.gpu_utilization.labels(*labels).set(util)
            m.gpu_memory_used.labels(*labels).set(used)
            m.gpu_memory_total.labels(*labels).set(total)

    async def run(self, interval_s: float) -> None:
        if not await self.start():
            return
        failed = False
        while True:
            try:
                await self.sample()
                failed = False
            except Exception as exc:
                if not failed:  # one line per outage, not one per sample
                    log.warning("gpu sample failed", extra={"reason": str(exc)})
                failed = True
            await asyncio.sleep(interval_s)
