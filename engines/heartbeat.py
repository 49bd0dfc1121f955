"""An engine's sign of life while it runs one-job tasks: :class:`EngineBeat` every ``interval`` s from a thread.

The supervisor tells a host that dropped off the network (every engine there silent) from a job that simply
runs long by these beats: a one-job engine spends its main thread in the job, so the beat comes from a
thread of its own, on a socket of its own (zmq sockets are not shared between threads). A batched engine's
serving loop beats by itself (``engines/batch.py``) and starts none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from llmsup.engines.messages import EngineBeat, encode
from llmsup.engines.stream import ChannelKeys, secure_client

BEAT_S = 0.25


class Heartbeat:
    def __init__(self, address: str, keys: ChannelKeys | None, status: Callable[[], EngineBeat],
                 interval: float = BEAT_S) -> None:
        self.address = address
        self.keys = keys
        self.status = status
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmsup-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 16)  # a beat is worth sending fresh or not at all
        secure_client(sock, self.keys)
        sock.connect(self.address)
        try:
            while not self._stopped.wait(self.interval):
                try:
                    sock.send(encode(self.status()), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
        finally:
            sock.close(linger=0)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
