"""Sources and requests begun together are spread over passes of the event loop (``PassRation``), so a scrape ready
meanwhile waits for a few of them, not for forty."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession, web
from yarl import URL

from exporter.config import Credentials, PollConfig
from exporter.rest.client import BitbucketClient
from exporter.sources import SourceState, run_source
from exporter.steps import STARTS_PER_PASS, PassRation, starts, unrationed


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its passes (each runs the callbacks ready when it began)."""

    passes = 0

    def _run_once(self) -> None:
        self.passes += 1
        super()._run_once()  # type: ignore[misc]


def run_counting(main: Callable[[CountingLoop], Awaitable[None]]) -> None:
    loop = CountingLoop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(loop), 10))
    finally:
        loop.close()


def test_at_most_per_pass_callers_go_on_in_one_pass_and_all_go_on() -> None:
    began: list[int] = []

    async def main(loop: CountingLoop) -> None:
        ration = PassRation(3)

        async def caller() -> None:
            await ration.turn()
            began.append(loop.passes)

        await asyncio.gather(*(caller() for _ in range(20)))

    run_counting(main)
    per_pass = Counter(began)
    assert len(began) == 20
    assert max(per_pass.values()) == 3, per_pass
    assert len(per_pass) == 7  # 20 callers, three a pass


def test_a_caller_alone_goes_on_at_once_pass_after_pass() -> None:
    began: list[int] = []

    async def main(loop: CountingLoop) -> None:
        ration = PassRation(1)
        for _ in range(5):
            before = loop.passes
            await ration.turn()
            began.append(loop.passes - before)
            await asyncio.sleep(0)

    run_counting(main)
    assert began == [0, 0, 0, 0, 0]  # never waits when nobody else took the pass's turn


async def starts_before_next_pass(begun: int = 20) -> int:
    """How many of ``begun`` starts begun together (tasks created in one step) go on before the loop's next pass:
    a callback scheduled after the tasks runs in the same pass as their first steps."""
    went: list[int] = []

    async def start() -> None:
        await starts().turn()
        went.append(1)

    tasks = [asyncio.create_task(start()) for _ in range(begun)]
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(lambda: seen.set_result(len(went)))
    await asyncio.gather(*tasks)
    return await seen


def test_a_loop_without_a_ration_lets_every_start_go_on_in_its_pass() -> None:
    async def rationed_then_not() -> tuple[int, int]:
        rationed = await starts_before_next_pass()
        unrationed()
        return rationed, await starts_before_next_pass()

    assert asyncio.run(rationed_then_not()) == (STARTS_PER_PASS, 20)


def test_forty_requests_begun_together_are_sent_a_few_a_pass() -> None:
    sent: list[int] = []
    answers: list[Any] = []

    async def main(loop: CountingLoop) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"path": request.path})

        app = web.Application()
        app.router.add_get("/rest/{name}", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as session:
                real_get = session.get

                def recording_get(*args: Any, **kwargs: Any) -> Any:
                    sent.append(loop.passes)
                    return real_get(*args, **kwargs)

                session.get = recording_get  # type: ignore[method-assign]
                client = BitbucketClient(session, PollConfig(concurrency_per_host=64))
                urls = [URL(f"http://127.0.0.1:{port}/rest/{i}") for i in range(40)]
                answers.extend(await asyncio.gather(*(client.get_json(u, Credentials()) for u in urls)))
        finally:
            await runner.cleanup()

    run_counting(main)
    assert answers == [{"path": f"/rest/{i}"} for i in range(40)]
    per_pass = Counter(sent)
    assert max(per_pass.values()) <= STARTS_PER_PASS, per_pass
    assert len(per_pass) >= 40 // STARTS_PER_PASS


def test_sources_started_together_begin_a_few_a_pass() -> None:
    began: list[int] = []
    states = [SourceState[int]() for _ in range(30)]

    async def main(loop: CountingLoop) -> None:
        async def fetch() -> int:
            began.append(loop.passes)
            return len(began)

        await asyncio.gather(*(run_source("target", "source", state, fetch) for state in states))

    run_counting(main)
    assert all(state.success for state in states)
    per_pass = Counter(began)
    assert max(per_pass.values()) <= STARTS_PER_PASS, per_pass
    assert len(per_pass) >= 30 // STARTS_PER_PASS
