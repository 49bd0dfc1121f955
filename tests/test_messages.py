"""Wire messages: every one round-trips as plain JSON data; decoding checks version, kind, direction and types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmsup.engines import runtime
from llmsup.engines.messages import (
    CONTROL_OPS,
    PROTOCOL_VERSION,
    STREAM_EVENTS,
    Abort,
    EngineBeat,
    Hello,
    JobDone,
    JobResult,
    JobSpec,
    Message,
    ProtocolError,
    Stop,
    Submit,
    TaskStarted,
    TokenPiece,
    decode_for_engine,
    decode_for_supervisor,
    encode,
    plain,
)
from llmsup.engines.protocol import GenParams, TokenLogprob, TopLogprob

pytestmark = pytest.mark.timeout(10)
PARAMS = GenParams(max_tokens=7, temperature=0.5, stop=("\n", "END"), top_k=3, seed=11, ignore_eos=True)
RESULT = JobResult("error", "partial ", 2, error="RuntimeError: x", traceback="Traceback ...\nRuntimeError: x",
                   transient=True, engine_dead=True, pid=42, rss_mb=12.5, elapsed_s=0.25, jobs_done=3)
TO_ENGINE: list[Message] = [JobSpec("job-1#1", "hello", PARAMS), Submit("job-2#1", "hi", 1.5, PARAMS),
                            Abort("job-2#1", "cancelled"), Stop()]
LOGPROB = TokenLogprob(17, " the", -0.25, 1, (TopLogprob(17, " the", -0.25), TopLogprob(4, " a", -1.5)))
TO_SUPERVISOR: list[Message] = [RESULT, JobResult("completed", "abc", 3, "stop", 5), Hello(99), TaskStarted("job-1#1"),
                                TokenPiece("job-1#1", 0, "héllo \u2603"), TokenPiece("job-1#1", 1, ""),
                                TokenPiece("job-1#1", 2, " the", 17, LOGPROB), TokenPiece("job-1#1", 3, "", 0),
                                JobDone("job-2#1", RESULT), EngineBeat(4, 2, 10, 300.5, 1)]


@pytest.mark.parametrize("msg", TO_ENGINE, ids=lambda m: type(m).__name__)
def test_engine_bound_messages_round_trip(msg: Message) -> None:
    assert decode_for_engine(encode(msg)) == msg
    assert decode_for_engine(json.loads(json.dumps(plain(msg)))) == msg  # plain data only: JSON keeps it whole


@pytest.mark.parametrize("msg", TO_SUPERVISOR, ids=lambda m: type(m).__name__)
def test_supervisor_bound_messages_round_trip(msg: Message) -> None:
    assert decode_for_supervisor(encode(msg)) == msg
    assert decode_for_supervisor(json.loads(json.dumps(plain(msg)))) == msg
    assert plain(msg)["version"] == PROTOCOL_VERSION and plain(msg)["kind"] == msg.KIND


def test_each_direction_reads_only_its_own_messages() -> None:
    for msg in TO_SUPERVISOR:
        with pytest.raises(ProtocolError) as err:
            decode_for_engine(encode(msg))
        assert err.value.problem == "unknown kind"
    for msg in TO_ENGINE:
        with pytest.raises(ProtocolError):
            decode_for_supervisor(encode(msg))
    with pytest.raises(ProtocolError) as err:  # a hello belongs on the control channel, not the token stream
        decode_for_supervisor(encode(Hello(1)), expect=STREAM_EVENTS)
    assert err.value.problem == "unexpected kind"
    with pytest.raises(ProtocolError):
        decode_for_engine(encode(JobSpec("k", "p")), expect=CONTROL_OPS)


def piece(**changes: Any) -> dict[str, Any]:
    return {**plain(TokenPiece("k", 3, "text")), **changes}


@pytest.mark.parametrize(("data", "problem"), [
    (b"", "not json"),
    (b"\xff\xfe", "not json"),
    (b"{'kind': 'piece'}", "not json"),
    (b"[" * 100_000, "not json"),
    (b"[1, 2]", "not an object"),
    (b"42", "not an object"),
    (None, "not an object"),
    ({"seq": 1}, "unknown kind"),
    (piece(kind=["piece"]), "unknown kind"),
    (piece(kind="pieces"), "unknown kind"),
    (piece(version=None), "version"),
    (piece(version=PROTOCOL_VERSION + 1), "version"),
    (piece(version=str(PROTOCOL_VERSION)), "version"),
    (piece(version=True), "version"),
    (piece(seq="3"), "bad field"),
    (piece(seq=True), "bad field"),
    (piece(seq=3.0), "bad field"),
    (piece(seq=None), "bad field"),
    (piece(text=b"bytes"), "bad field"),
    (piece(text=["a"]), "bad field"),
    (piece(key={"a": 1}), "bad field"),
    ({k: v for k, v in piece().items() if k != "seq"}, "missing field"),
    ({**plain(EngineBeat(1)), "rss_mb": float("nan")}, "bad field"),
    ({**plain(EngineBeat(1)), "rss_mb": float("inf")}, "bad field"),
    ({**plain(EngineBeat(1)), "rss_mb": "12"}, "bad field"),
    ({**plain(JobDone("k", RESULT)), "result": "completed"}, "bad field"),
    ({**plain(JobDone("k", RESULT)), "result": {**plain(RESULT), "outcome": "exploded"}}, "bad field"),
    ({**plain(JobDone("k", RESULT)), "result": {**plain(RESULT), "version": 0}}, "version"),
])
def test_anything_else_is_one_protocol_error(data: object, problem: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_for_supervisor(data)
    assert err.value.problem == problem
    assert isinstance(err.value, ValueError)


def test_engine_bound_field_types_are_checked_too() -> None:
    submit = plain(Submit("k", "p", 1.0, PARAMS))
    for bad in ({"deadline_s": "1"}, {"params": {"max_tokens": "7"}}, {"params": {"stop": "END"}},
                {"params": {"stop": [1]}}, {"params": {"seed": 1.5}}, {"params": []}, {"prompt": None}):
        with pytest.raises(ProtocolError):
            decode_for_engine({**submit, **bad})


def test_a_piece_carries_its_token_id_and_logprob_only_when_set() -> None:
    bare = plain(TokenPiece("k", 0, "a"))
    assert set(bare) == {"key", "seq", "text", "version", "kind"}  # no extra bytes per token unless asked
    assert len(encode(TokenPiece("k", 0, "a"))) == len(b'{"key":"k","seq":0,"text":"a","version":1,"kind":"piece"}')
    full = plain(TokenPiece("k", 2, " the", 17, LOGPROB))
    assert full["token_id"] == 17 and full["logprob"]["top"][1] == {"token_id": 4, "token": " a", "logprob": -1.5}
    assert decode_for_supervisor(encode(TokenPiece("k", 2, " the", None, LOGPROB))).logprob == LOGPROB
    assert decode_for_supervisor({**bare, "token_id": None, "logprob": None}) == TokenPiece("k", 0, "a")
    for bad in ({"token_id": "17"}, {"token_id": 1.5}, {"logprob": -0.25}, {"logprob": {"token_id": 1}},
                {"logprob": {**full["logprob"], "top": [{"token_id": 1, "token": "x", "logprob": "-1"}]}}):
        with pytest.raises(ProtocolError) as err:
            decode_for_supervisor({**bare, **bad})
        assert err.value.problem in ("bad field", "missing field")


def test_ints_read_as_floats_and_unknown_fields_are_ignored() -> None:
    beat = decode_for_supervisor({**plain(EngineBeat(1)), "rss_mb": 300, "added_by_a_later_build": [1, 2]})
    assert beat == EngineBeat(1, rss_mb=300.0) and isinstance(beat.rss_mb, float)
    spec = decode_for_engine({"kind": "job", "version": PROTOCOL_VERSION, "key": "k", "prompt": "p"})
    assert spec == JobSpec("k", "p", GenParams())  # defaults fill what is not sent


@pytest.fixture
def no_runtime() -> Iterator[None]:
    saved = runtime._RUNTIME
    runtime._RUNTIME = None
    try:
        yield
    finally:
        runtime._RUNTIME = saved


def test_run_job_answers_a_spec_it_cannot_read_with_an_error_result(no_runtime: None) -> None:
    for spec in ({"job_id": "k", "prompt": "p"}, {**plain(JobSpec("k", "p")), "version": 0}, "not a dict"):
        result = decode_for_supervisor(runtime.run_job(spec), expect=(JobResult,))  # type: ignore[arg-type]
        assert result.outcome == "error" and result.error.startswith("ProtocolError") and not result.transient
    idle = decode_for_supervisor(runtime.run_job(plain(JobSpec("k", "p"))), expect=(JobResult,))
    assert idle.outcome == "error" and idle.error == "engine not initialised" and idle.transient
