"""A peer without keys, run on a test host: it connects to every given port, sends garbage, and reports what came back.

``python garbage_peer.py SPEC`` where SPEC is JSON: ``{"targets": ["addr:port", ...], "marker": "...",
"server_public": "<Z85 key>" | null, "curve_targets": ["addr:port", ...], "seconds": 3}``. For each target: a raw
TCP connection that sends random bytes and a ZMTP greeting of the NULL mechanism, and zmq sockets of several
types without keys (SUB subscribed to everything, DEALER, PULL, REQ) that send garbage; for each ``curve_target``
a CURVE client that knows the server's public key but holds a key pair of its own (not the join file's). Prints
one JSON line: bytes received per target and whether the marker (a job's text) was among them.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

import zmq

ZMTP_NULL_GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31


def main(spec: dict[str, object]) -> dict[str, object]:  # noqa: C901 - one attack of each kind against every port, in order, on purpose
    targets = [str(t) for t in spec["targets"]]  # type: ignore[attr-defined]
    seconds = float(spec.get("seconds", 3))  # type: ignore[arg-type]
    received: dict[str, bytes] = {t: b"" for t in targets}
    ctx = zmq.Context()
    raw = []
    for target in targets:
        host, port = target.rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.sendall(os.urandom(2048) + ZMTP_NULL_GREETING + os.urandom(2048))
            s.setblocking(False)
            raw.append((target, s))
        except OSError:
            pass
    zsocks = []
    for target in targets:
        for kind in (zmq.SUB, zmq.DEALER, zmq.PULL, zmq.REQ):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(f"tcp://{target}")
            if kind in (zmq.DEALER, zmq.REQ):
                try:
                    sock.send_multipart([b"garbage", os.urandom(64), b"{\"kind\": \"piece\"}"], flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
            zsocks.append((target, sock))
    server_public = spec.get("server_public")
    for target in spec.get("curve_targets", []) or []:  # type: ignore[attr-defined]
        public, secret = zmq.curve_keypair()
        for kind in (zmq.DEALER, zmq.PUSH):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.CURVE_SERVERKEY, str(server_public).encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.connect(f"tcp://{target}")
            try:
                sock.send(b"{\"version\": 1, \"kind\": \"beat\", \"engine_id\": 0}", flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            zsocks.append((str(target), sock))
    poller = zmq.Poller()
    for _, sock in zsocks:
        poller.register(sock, zmq.POLLIN)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock, _ in poller.poll(100):
            target = next(t for t, s in zsocks if s is sock)
            while sock.poll(0):
                received[target] += b"".join(sock.recv_multipart())
        readable, _, _ = select.select([s for _, s in raw], [], [], 0.05) if raw else ([], [], [])
        for s in readable:
            target = next(t for t, r in raw if r is s)
            try:
                received[target] += s.recv(65536)
            except OSError:
                pass
    for _, s in raw:
        s.close()
    for _, sock in zsocks:
        sock.close(linger=0)
    ctx.term()
    marker = str(spec["marker"]).encode()
    return {"received": {t: len(b) for t, b in received.items()}, "leaked": any(marker in b for b in received.values()),
            "connected_raw": len(raw)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
