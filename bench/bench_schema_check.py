"""A request's JSON schema checked on the event loop, in a worker thread, and in the worker process
(``web/schema_check.py``): how long the check takes and how late a 10 ms loop timer fires meanwhile (how late a
deadline timer would fire).

    .venv/bin/python -m bench.bench_schema_check [--items 2000] [--props 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from llmsup.web.schema_check import SchemaChecker, SchemaTooComplex, check_schema_text


def quadratic(items: int) -> dict[str, Any]:
    return {"type": [x for i in range(items // 2) for x in (i, f"a{i}")]}


def wide(props: int) -> dict[str, Any]:
    p = {f"p{i}": {"type": "string", "maxLength": 10, "description": "x" * 20} for i in range(props)}
    return {"type": "object", "properties": p, "required": list(p)}


async def lagged(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds the work took, worst lateness of a 10 ms timer meanwhile)."""
    worst, done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - t0 - 0.01)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    t = time.perf_counter()
    await work()
    took = time.perf_counter() - t
    done = True
    await tick
    return took, worst


async def main(items: int, props: int) -> None:
    checker = SchemaChecker(time_limit_s=60)
    await checker.check("{}")  # the worker started
    print("| schema | where | check s | loop lag max ms |\n|---|---|---|---|")
    try:
        for name, schema in ((f"type: {items} mixed items", quadratic(items)), (f"{props} properties", wide(props))):
            text = json.dumps(schema)

            async def on_loop(text: str = text) -> object:
                return check_schema_text(text)

            async def in_thread(text: str = text) -> object:
                return await asyncio.to_thread(check_schema_text, text)

            async def in_process(text: str = text) -> object:
                try:
                    return await checker.check(text)
                except SchemaTooComplex as exc:
                    return exc

            for where, work in (("event loop", on_loop), ("thread", in_thread), ("worker process", in_process)):
                took, lag = await lagged(work)
                print(f"| {name} | {where} | {took:.2f} | {lag * 1000:.0f} |")
    finally:
        checker.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--props", type=int, default=2000)
    a = ap.parse_args()
    asyncio.run(main(a.items, a.props))
