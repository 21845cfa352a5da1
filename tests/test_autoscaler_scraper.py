"""The scraper against real HTTP stat endpoints: Knative's scraper cases (reference §5.6)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from autoscaler.scraper import (
    SCRAPER_POD_NAME,
    PodsExhaustedError,
    ScrapeError,
    StatScraper,
    make_session,
    order_pods,
)
from cluster.ports import PodEndpoint
from tests.test_autoscaler_fakes import FakePod, fake_pods

NOW = 1_700_000_000.0
WINDOW = 60.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(timeout_s=0.5) as s:
        yield s


def scraper(session: aiohttp.ClientSession) -> StatScraper:
    return StatScraper(session, timeout_s=0.5, rng=random.Random(7))


def with_ages(pods: list[FakePod], youngest_s: float) -> None:
    # Knative's testStatsWithTime: pod i answers (i+1)*2 and is i*10 + youngest seconds old.
    for i, pod in enumerate(pods):
        pod.serve(conc=(i + 1) * 2, rps=2)
        pod.started_at = NOW - (i * 10 + youngest_s)


async def test_no_pods_no_stat(session: aiohttp.ClientSession) -> None:
    assert await scraper(session).scrape([], stable_window_s=WINDOW, now=NOW) is None


async def test_all_young_pods(session: aiohttp.ClientSession) -> None:
    async with fake_pods(4) as pods:
        with_ages(pods, 0)
        got = await scraper(session).scrape(
            [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
        )
    assert got is not None
    assert got.pod_name == SCRAPER_POD_NAME
    assert got.average_concurrent_requests == 20  # (2+4+6+8) / 4 * 4
    assert got.request_count == 8


async def test_all_old_pods(session: aiohttp.ClientSession) -> None:
    async with fake_pods(6) as pods:
        with_ages(pods, WINDOW)
        # Knative's service scraper takes the first five; direct scraping shuffles the old
        # pods, so pin the sample by having the sixth one refuse.
        pods[5].status = 503
        got = await scraper(session).scrape(
            [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
        )
    assert got is not None
    assert got.average_concurrent_requests == 36  # (2+4+6+8+10) / 5 * 6


async def test_some_old_pods_are_preferred(session: aiohttp.ClientSession) -> None:
    async with fake_pods(11) as pods:
        with_ages(pods, WINDOW / 2)  # pods 3..10 are old: 8 old ≥ n = 7
        pods[10].status = 500
        got = await scraper(session).scrape(
            [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
        )
        young_hits = [p.hits for p in pods[:3]]
    assert got is not None
    assert got.average_concurrent_requests == pytest.approx(154)  # (8+…+20) / 7 * 11
    assert young_hits == [0, 0, 0]


async def test_direct_scrape_one_failing(session: aiohttp.ClientSession) -> None:
    # TestPodDirectScrapeSomeFailButSuccess: 5 pods, n = 4, one fails → 16 / 4 * 5 = 20.
    async with fake_pods(5) as pods:
        for pod, conc in zip(pods, (3, 5, 0, 3, 5), strict=True):
            pod.serve(conc=conc)
        pods[2].status = 500
        got = await scraper(session).scrape(
            [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
        )
    assert got is not None
    assert got.average_concurrent_requests == 20


async def test_a_hanging_pod_times_out_and_another_is_taken(
    session: aiohttp.ClientSession,
) -> None:
    async with fake_pods(5) as pods:
        for pod, conc in zip(pods, (3, 5, 0, 3, 5), strict=True):
            pod.serve(conc=conc)
        pods[2].hang = True
        got = await scraper(session).scrape(
            [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
        )
    assert got is not None
    assert got.average_concurrent_requests == 20


async def test_pods_exhausted(session: aiohttp.ClientSession) -> None:
    # TestPodDirectScrapePodsExhausted: 4 pods need 4 answers; one fails → error.
    async with fake_pods(4) as pods:
        for pod in pods:
            pod.serve(conc=1)
        pods[1].status = 500
        with pytest.raises(PodsExhaustedError):
            await scraper(session).scrape(
                [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
            )


async def test_none_answer(session: aiohttp.ClientSession) -> None:
    async with fake_pods(2) as pods:
        for pod in pods:
            pod.status = 404
        with pytest.raises(ScrapeError) as info:
            await scraper(session).scrape(
                [p.endpoint for p in pods], stable_window_s=WINDOW, now=NOW
            )
    assert not isinstance(info.value, PodsExhaustedError)
    assert "HTTP 404" in str(info.value)


async def test_refused_connection_and_bad_body_are_errors(
    session: aiohttp.ClientSession,
) -> None:
    async with fake_pods(1) as pods:
        gone = pods[0].endpoint
    with pytest.raises(ScrapeError):
        await scraper(session).scrape_pod(gone)


def test_order_pods_old_first_and_only_the_sampled_group_shuffled() -> None:
    old = [
        PodEndpoint(name=f"old-{i}", address="", stats_address="", started_at=0) for i in range(3)
    ]
    young = [
        PodEndpoint(name=f"young-{i}", address="", stats_address="", started_at=NOW)
        for i in range(5)
    ]
    ordered = order_pods(
        young + old, sample=5, stable_window_s=WINDOW, now=NOW, rng=random.Random(1)
    )
    assert ordered[:3] == old  # fewer old than the sample: all taken, in order
    assert sorted(p.name for p in ordered[3:]) == [p.name for p in young]
