"""End to end: ``zeroserve up`` with a revision annotated ``logger.zeroserve.dev/url`` as a real
process: its replicas' queue-proxies log each request and response to a sink on loopback (the
annotation reaches them through the supervisor's environment), and a sink that goes down
changes nothing for the requests."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.e2e_support import emulator_spec, wait_for, zeroserve_up
from tests.test_payload_log import Sink, sink

HOST = {"Host": "gpu.default.example.com"}


async def test_zeroserve_up_logs_payloads_to_the_sink(tmp_path: Path) -> None:
    async with sink() as s:
        spec = emulator_spec(
            env={"SERVICE_TIME_MS": "1"},
            annotations={"logger.zeroserve.dev/url": s.url, "logger.zeroserve.dev/mode": "all"},
        )
        path = tmp_path / "spec.yaml"
        path.write_text(spec)
        async with (
            zeroserve_up(path, tmp_path / "up.log") as rt,
            aiohttp.ClientSession() as session,
        ):
            for n in range(5):
                async with session.post(
                    f"{rt.url}/", data=f"payload {n}".encode(), headers={**HOST, "Ce-Id": f"id-{n}"}
                ) as resp:
                    assert resp.status == 200, await resp.text()

            def all_logged() -> bool:
                pairs = s.pairs()
                return all(len(pairs.get(f"id-{n}", {})) == 2 for n in range(5))

            await wait_for(all_logged, within=10, what="10 events at the sink")
            requests = {e.id: e for e in s.events if e.type.endswith(".request")}
            assert requests["id-3"].data == b"payload 3"
            assert requests["id-3"].attributes["inferenceservicename"] == "gpu"
            assert requests["id-3"].attributes["endpoint"] == "gpu-v1"
            assert _pods(s)  # the replica's own name is the source
            assert s.runner is not None
            await s.runner.cleanup()  # the sink goes down: requests go on as before
            s.runner = None
            for _ in range(5):
                async with session.post(f"{rt.url}/", data=b"x", headers=HOST) as resp:
                    assert resp.status == 200


def _pods(s: Sink) -> set[str]:
    return {e.attributes["source"] for e in s.events if e.attributes["source"].startswith("gpu-v1")}
