"""End to end: ``zeroserve up examples/shadow.yaml`` as a real process. The shadow revision
starts at zero and is woken by its copies alone; the two revisions' responses are compared, and
``zeroserve status`` shows their agreement."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_support import ROOT, wait_for, zeroserve_up

BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip


def _compared(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "activator_shadow_comparisons_total" and s.labels.get("revision") == "iris-v2"
    )


async def test_shadow_scales_from_zero_on_its_copies_and_agrees(tmp_path: Path) -> None:
    async with (
        zeroserve_up(ROOT / "examples" / "shadow.yaml", tmp_path / "up.log") as rt,
        aiohttp.ClientSession() as session,
    ):
        await wait_for(lambda: rt.revisions(session), within=10, what="the status endpoint")
        at_start = (await rt.revisions(session))["iris-v2"]
        assert not at_start.get("ready"), at_start
        assert at_start.get("applied") == 0, at_start  # at zero: no copy has come yet
        metrics_url = rt.status_url.replace("/v1/revisions", "/metrics")

        async def infer() -> None:
            async with session.post(
                f"{rt.url}/v2/models/iris/infer",
                json=BODY,
                headers={"Host": "iris.default.example.com"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["model_version"] == "1"  # the primary's, always

        for _ in range(20):
            await infer()

        async def compared() -> float | None:
            async with session.get(metrics_url) as resp:
                n = _compared(await resp.text())
            return n if n >= 3 else None

        # the copies woke iris-v2 (it had no replica), then were compared with iris-v1's
        await wait_for(compared, within=60, what="comparisons with the shadow")
        await wait_for(lambda: rt.ready(session, "iris-v2"), within=10, what="iris-v2 ready")
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "zeroserve", "status", "--url", rt.status_url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        shadows = out.stdout.split("\nSHADOW ", 1)[1].splitlines()
        assert "AGREEMENT" in shadows[0]
        [line] = [x for x in shadows if x.startswith("default/iris-v2 ")]
        assert line.split()[1] == "iris"  # the service it shadows
        assert "100.0%" in line, out.stdout  # the same model: outputs equal
        print(out.stdout)
