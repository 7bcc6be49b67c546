"""Waiting for an exporter started in its own process to answer /-/ready (the benchmarks start it so)."""

from __future__ import annotations

import asyncio

import aiohttp


async def wait_ready(base_url: str, within: float = 30.0) -> bool:
    """Ask ``base_url``/-/ready every 0.1 s until it answers 200 (True) or ``within`` seconds pass (False)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(int(within * 10)):
            try:
                async with http.get(base_url + "/-/ready") as resp:
                    if resp.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    return False
