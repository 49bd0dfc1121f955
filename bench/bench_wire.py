"""CPU cost of the typed wire messages per streamed token, against the untyped byte frames they replaced.

Each figure is the best of several rounds (the least disturbed by other work on the machine), in µs per
message, on one core of this machine:

- untyped: ``[key, seq, text]`` as three byte frames (encode on the engine, decode in the supervisor);
- typed: :class:`TokenPiece` through ``encode`` / ``decode_for_supervisor`` (JSON, every field type checked);
  also with the token's id and logprob record (top 1), as a request that asks for logprobs streams them;
- a :class:`JobDone` with its full :class:`JobResult` (once per job), and a rejected message (garbage).

    .venv/bin/python -m bench.bench_wire [--rounds 7] [--number 20000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.stats import table
from llmsup.engines.messages import (
    STREAM_EVENTS,
    JobDone,
    JobResult,
    ProtocolError,
    TokenPiece,
    decode_for_supervisor,
    encode,
)
from llmsup.engines.protocol import TokenLogprob, TopLogprob

KEY, TEXT = "job-0123456789abcdef#1", "hello "


def best_us(fn: Callable[[], object], rounds: int, number: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def untyped_encode() -> list[bytes]:
    return [KEY.encode(), b"3", TEXT.encode()]


FRAMES = untyped_encode()


def untyped_decode() -> tuple[str, int, str]:
    key, seq, text = FRAMES
    return key.decode(), int(seq), text.decode()


PIECE = TokenPiece(KEY, 3, TEXT)
PIECE_BYTES = encode(PIECE)
LOGPROB_PIECE = TokenPiece(KEY, 3, TEXT, 1234, TokenLogprob(1234, TEXT, -0.25, 1, (TopLogprob(1234, TEXT, -0.25),)))
LOGPROB_PIECE_BYTES = encode(LOGPROB_PIECE)
DONE = JobDone(KEY, JobResult("completed", TEXT * 100, 100, "length", 12, pid=1234, rss_mb=380.5, jobs_done=7))
DONE_BYTES = encode(DONE)
GARBAGE = PIECE_BYTES.replace(b'"seq":3', b'"seq":"3"')


def rejected() -> None:
    try:
        decode_for_supervisor(GARBAGE, expect=STREAM_EVENTS)
    except ProtocolError:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("token piece, untyped byte frames", untyped_encode, untyped_decode),
        ("token piece, typed (TokenPiece)", lambda: encode(PIECE),
         lambda: decode_for_supervisor(PIECE_BYTES, expect=STREAM_EVENTS)),
        ("token piece with its id and logprob (top 1)", lambda: encode(LOGPROB_PIECE),
         lambda: decode_for_supervisor(LOGPROB_PIECE_BYTES, expect=STREAM_EVENTS)),
        ("job done with its result (JobDone)", lambda: encode(DONE),
         lambda: decode_for_supervisor(DONE_BYTES, expect=STREAM_EVENTS)),
        ("rejected: a wrong field type", lambda: None, rejected),
    ]
    rows = []
    for label, enc, dec in cases:
        rows.append([label, best_us(enc, args.rounds, args.number), best_us(dec, args.rounds, args.number)])
    print(table("Wire message cost, µs per message (best of rounds)", ["message", "encode µs", "decode µs"], rows))


if __name__ == "__main__":
    main()
