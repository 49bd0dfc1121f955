"""Messages from engines that cannot be read: dropped, counted, and logged once per peer and problem.

A peer that keeps sending garbage (another llmsup build, a stray client) must neither stop a loop nor
flood the log: every message is counted in ``llmsup_malformed_messages_total{channel}``, and only the
first one of each (peer, kind of problem) is logged.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter

from llmsup.engines.messages import ProtocolError

log = logging.getLogger("llmsup.wire")
MAX_LOGGED = 1000  # distinct (peer, problem) pairs remembered; past that, only counted


class MalformedLog:
    def __init__(self, counter: Counter, channel: str) -> None:
        self.channel = channel
        self._counter = counter  # its child looked up at each count: a cleared counter keeps counting
        counter.labels(channel)  # exported from the start, at zero
        self._logged: set[tuple[str, str]] = set()

    def reject(self, peer: str, error: ProtocolError) -> None:
        self._counter.labels(self.channel).inc()
        key = (peer, error.problem)
        if key in self._logged or len(self._logged) >= MAX_LOGGED:
            return
        self._logged.add(key)
        log.warning("dropped an unreadable message on the %s channel from %s: %s (more from this peer with this "
                    "problem are only counted in llmsup_malformed_messages_total)", self.channel, peer, error)
