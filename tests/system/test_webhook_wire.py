"""The webhook receiver as a real network delivers to it: bodies split into segments of every size, slowly,
chunked or with a length, are read whole before their signature is checked; hostile signed payloads are refused
cleanly; a replay is recognised by what was signed, whatever its X-Request-Id. Raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from exporter.secret_files import RECHECK_SECONDS
from tests.conftest import Running, running_farm, value
from tests.system.test_webhook_abuse import PATH, REQUESTS, SECRET, bitbucket_date, prepared, push, sign, synced

SEGMENT = 1448  # a TCP segment's payload on a 1500-byte MTU


@asynccontextmanager
async def receiving(tmp_path: Path, max_body_bytes: int) -> AsyncIterator[tuple[Running, int]]:
    """A farm and an exporter taking signed webhooks up to ``max_body_bytes``; the exporter's port."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    async with running_farm(prepare=prepared(secret_file, max_body_bytes=max_body_bytes)) as run:
        await run.wait_ready()
        yield run, int(run.url.rsplit(":", 1)[1])


def request_bytes(run: Running, body: bytes, event: str, chunked: bool, request_id: str = "") -> tuple[bytes, bytes]:
    """The head, and the body as it goes on the wire (with a length, or in chunks of at most 1000 bytes)."""
    host = run.url.removeprefix("http://")
    head = [f"POST {PATH} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", f"X-Event-Key: {event}",
            f"X-Hub-Signature: {sign(body)}", "Connection: close"]  # fmt: skip
    if request_id:
        head.append(f"X-Request-Id: {request_id}")
    if chunked:
        head.append("Transfer-Encoding: chunked")
        wire = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, len(body), 1000)
        )
        wire += b"0\r\n\r\n"
    else:
        head.append(f"Content-Length: {len(body)}")
        wire = body
    return ("\r\n".join(head) + "\r\n\r\n").encode(), wire


def send_split(port: int, head: bytes, wire: bytes, segment: int, pause: float) -> int:
    """Send the head, then the body in ``segment``-byte writes (``pause`` s apart, Nagle off); the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        for start in range(0, len(wire), segment):
            sock.sendall(wire[start : start + segment])
            if pause:
                time.sleep(pause)
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1])


def a_push_of(size: int, repo_id: int, to_hash: str) -> bytes:
    """A signed-size push: padded with many ref changes to about ``size`` bytes, as a push of many refs is."""
    document = push(repo_id, to_hash)
    change = document["changes"][0]
    while len(json.dumps(document)) < size:
        document["changes"].append({**change, "refId": f"refs/heads/b{len(document['changes'])}"})
    return json.dumps(document).encode()


async def test_bodies_split_at_every_segment_size_slowly_chunked_or_not_are_read_whole(tmp_path: Path) -> None:
    async with receiving(tmp_path, 8192) as (run, port):
        body = a_push_of(2800, 1, "a" * 40)
        statuses: dict[tuple[int, float, bool], int] = {}

        def deliver_all() -> None:
            # Every segment size, back to back, chunked and with a length; every size again with the segments 0.2 ms
            # apart (chunked for even sizes); and a few sizes 1 ms apart (how a WAN link delivers them).
            for segment in range(1, SEGMENT + 1):
                for chunked in (False, True):
                    head, wire = request_bytes(run, body, "repo:refs_changed", chunked)
                    statuses[(segment, 0.0, chunked)] = send_split(port, head, wire, segment, 0.0)
                chunked = segment % 2 == 0
                head, wire = request_bytes(run, body, "repo:refs_changed", chunked)
                statuses[(segment, 0.0002, chunked)] = send_split(port, head, wire, segment, 0.0002)
            for segment in (7, 100, 536, 1000, SEGMENT):
                for chunked in (False, True):
                    head, wire = request_bytes(run, body, "repo:refs_changed", chunked)
                    statuses[(segment, 0.001, chunked)] = send_split(port, head, wire, segment, 0.001)

        await asyncio.to_thread(deliver_all)
        refused = {key: status for key, status in statuses.items() if status != 200}
        assert refused == {}, f"{len(refused)} of {len(statuses)} refused: {sorted(refused.items())[:5]}"
        run.settle()  # every delivery is answered: the next rendering counts them
        samples = await run.metrics()
        assert value(samples, REQUESTS, event="repo:refs_changed", outcome="bad_signature") is None
        # A chunked body over the cap is too large, not a bad signature.
        large = a_push_of(9000, 1, "b" * 40)
        head, wire = request_bytes(run, large, "repo:refs_changed", chunked=True)
        assert await asyncio.to_thread(send_split, port, head, wire, SEGMENT, 0.001) == 413


async def test_hostile_signed_payloads_are_refused_cleanly_and_replays_are_known_by_their_body(tmp_path: Path) -> None:
    async with receiving(tmp_path, 65536) as (run, port):

        async def deliver(document: Any, event: str = "repo:refs_changed", request_id: str = "") -> int:
            raw = document if isinstance(document, bytes) else json.dumps(document).encode()
            head, wire = request_bytes(run, raw, event, chunked=False, request_id=request_id)
            return await asyncio.to_thread(send_split, port, head, wire, SEGMENT, 0.0)

        assert await deliver(b"[" * 3000 + b"]" * 3000) == 400  # nested deeper than the parser goes
        huge = json.dumps({**push(1, "c" * 40), "repository": {"id": "ID"}}).replace('"ID"', "1" + "0" * 5000)
        assert await deliver(huge.encode()) == 400  # an integer of 5,001 digits
        for date in (math.inf, "Infinity", bitbucket_date(time.time() + 3 * 86400), bitbucket_date(0)):
            raw = json.dumps({**push(1, "d" * 40), "date": date}).encode()
            assert await deliver(raw) == 400, date
        samples = await run.metrics_until(
            lambda s: value(s, REQUESTS, event="repo:refs_changed", outcome="malformed") == 6.0, "6 refused"
        )
        # The latency sum stays finite.
        total = value(samples, "bitbucket_mirror_push_to_sync_seconds_sum", mirror="sydney", sync="incremental")
        assert total is None or math.isfinite(total)

        # A replay is the same signed body, whatever X-Request-Id says; a new body is new, whatever it says.
        pushed = push(1, "e" * 40)
        assert await deliver(pushed, request_id="first") == 200
        assert await deliver(pushed, request_id="a-new-id-on-an-old-body") == 200
        sync = synced(1, "e" * 40, bitbucket_date(time.time() + 3))
        assert await deliver(sync, "mirror:repo_synchronized", request_id="first") == 200
        samples = await run.metrics_until(
            lambda s: value(s, REQUESTS, event="mirror:repo_synchronized", outcome="accepted") == 1.0, "the sync"
        )
        assert value(samples, REQUESTS, event="repo:refs_changed", outcome="replayed") == 1.0
        assert value(samples, "bitbucket_mirror_push_to_sync_seconds_count", mirror="sydney", sync="incremental") == 1


async def test_a_commit_id_is_matched_whole() -> None:
    async with running_farm() as run:
        await run.wait_ready()
        status, _ = await run.get("/api/v1/repositories/PRJ1/repo-1/mirrors?commit=abcdef1%0A")
        assert status == 400
        status, _ = await run.get("/api/v1/repositories/PRJ1/repo-1/mirrors?commit=abcdef1&since=inf")
        assert status == 400


async def test_a_secret_file_turned_into_a_fifo_freezes_nothing(tmp_path: Path) -> None:
    import os

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    async with running_farm(prepare=prepared(secret_file)) as run:
        await run.wait_ready()
        port = int(run.url.rsplit(":", 1)[1])
        secret_file.unlink()
        os.mkfifo(secret_file)  # a FIFO with no writer: opening it for reading would block for ever
        await asyncio.sleep(RECHECK_SECONDS + 0.1)  # the file is looked at once a second
        body = json.dumps(push(1, "f" * 40)).encode()
        head, wire = request_bytes(run, body, "repo:refs_changed", chunked=False)
        started = time.monotonic()
        assert await asyncio.wait_for(asyncio.to_thread(send_split, port, head, wire, SEGMENT, 0.0), 10) == 503
        unsigned = head.replace(f"X-Hub-Signature: {sign(body)}\r\n".encode(), b"")
        assert await asyncio.wait_for(asyncio.to_thread(send_split, port, unsigned, wire, SEGMENT, 0.0), 10) == 401
        assert time.monotonic() - started < 5
        samples = await run.metrics_until(
            lambda s: value(s, REQUESTS, event="repo:refs_changed", outcome="secret_unreadable") == 1.0, "counted"
        )
        assert value(samples, REQUESTS, event="repo:refs_changed", outcome="bad_signature") == 1.0
