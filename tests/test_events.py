"""The event hub: who gets which event, bounded queues, and closing."""

from __future__ import annotations

import asyncio

from llmsup.supervisor.core.events import EventHub


def drain(sub: object) -> list[object]:
    queue = sub.queue  # type: ignore[attr-defined]
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_a_job_subscriber_gets_its_job_only_and_an_all_jobs_subscriber_gets_every_job() -> None:
    hub = EventHub()
    a, b, every = hub.subscribe("a"), hub.subscribe("b"), hub.subscribe(None)
    hub.publish("a", {"n": 1})
    hub.publish("b", {"n": 2})
    hub.publish(None, {"n": 3})
    assert drain(a) == [{"n": 1}] and drain(b) == [{"n": 2}]
    assert drain(every) == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_unsubscribing_forgets_the_subscriber_and_its_job() -> None:
    hub = EventHub()
    a1, a2, every = hub.subscribe("a"), hub.subscribe("a"), hub.subscribe()
    assert hub.subscribers() == 3
    a1.close()
    hub.publish("a", {"n": 1})
    assert drain(a1) == [] and drain(a2) == [{"n": 1}]
    a2.close()
    every.close()
    a2.close()  # twice is harmless
    assert hub.subscribers() == 0 and hub._by_job == {}


def test_a_subscriber_that_falls_behind_gets_the_end_marker_instead_of_growing() -> None:
    hub = EventHub()
    slow = hub.subscribe("a", maxsize=3)
    for n in range(10):
        hub.publish("a", {"n": n})
    assert slow.overflowed and drain(slow) == [None]


def test_close_all_ends_every_stream() -> None:
    async def run() -> list[object]:
        hub = EventHub()
        subs = [hub.subscribe("a"), hub.subscribe("b"), hub.subscribe()]
        hub.close_all()
        assert hub.subscribers() == 0
        return [await asyncio.wait_for(s.get(), 5) for s in subs]

    assert asyncio.run(run()) == [None, None, None]
