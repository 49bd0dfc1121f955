"""The in-process engine driver: the sim backend's behaviours played on the caller's scheduler, no processes.

Beside ``NotStarted`` (``driver.py``), a third implementation of the driver port: engines are records in this
object, a job is one timer per token. It lets the whole supervisor (the core, its loops, the in-memory store, the web
app) run in one process for tests, as huey's immediate mode does (``supervisor/inprocess.py``).

The ``[sim:...]`` directives act as in an engine process (``engines/sim.py``): normal and ``slow=S`` jobs stream
their tokens and complete; ``error`` fails; ``hang`` streams a few tokens, then waits for SIGINT (the job ends
interrupted with what it streamed); ``hang-nosigint`` streams a few tokens, then neither SIGINT nor the probe behind it
answer, only the kill ends it; ``crash`` streams a few tokens, then the engine dies. Batched engines end a request at
its deadline themselves. Not simulated: the lost-reply race, memory, controller loss, hosts.

Time is passed in: ``schedule(delay, callback)`` runs the callback ``delay`` seconds later (the loop's
``call_later`` in the shell, a fake scheduler in a test). Every report goes to the sink from a scheduled callback,
never from inside a call of the core (as the cluster driver does with ``call_soon``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llmsup.engines import sim
from llmsup.engines.messages import JobResult, JobSpec
from llmsup.engines.protocol import GenParams, RequestRejected, StopMatcher, TokenLogprob
from llmsup.supervisor.core import reports as ev
from llmsup.supervisor.core.engine_state import Engine

log = logging.getLogger("llmsup.inprocess")
HOST = "inprocess"
FIRST_PID = 5_000_000  # simulated engines' pids: above Linux's largest pid (4194304), so no process has one


class Timer(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Timer]


@dataclass
class _Run:
    """One job on one simulated engine."""

    key: str
    words: list[str]
    params: GenParams
    token_s: float
    limit: int  # tokens before it completes, or before its scripted end
    end: str | None  # hang | hang-nosigint | crash
    stops: StopMatcher
    text: str = ""
    count: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    stuck: str | None = None  # in its scripted end: "hang" (SIGINT ends it) or "hang-nosigint" (only a kill)


@dataclass
class _SimEngine:
    id: int
    set_id: str
    gpu: str
    runs: dict[str, _Run] = field(default_factory=dict)
    probes: list[str] = field(default_factory=list)  # probes queued behind its running job
    jobs_done: int = 0


class InProcessDriver:
    """Simulated engines on ``schedule``; ``token_s`` unless the engine config names ``sim_token_s``."""

    can_launch = True
    local_key = HOST + "|0"

    def __init__(self, sink: Callable[[ev.Report], None], schedule: Schedule, token_s: float = 0.005,
                 start_s: float = 0.0) -> None:
        self.sink = sink
        self.schedule = schedule
        self.token_s = token_s
        self.start_s = start_s  # from launch to the engine registering
        self._ids = itertools.count()
        self._sets = itertools.count()
        self._engines: dict[int, _SimEngine] = {}
        self._stopped = False  # a timer that fires after stop() does nothing

    # plumbing ------------------------------------------------------------------------------------------
    def _later(self, fn: Callable[[], None], delay: float = 0.0) -> Timer:
        def run() -> None:
            if not self._stopped:
                fn()

        return self.schedule(delay, run)

    def _report(self, *events: ev.Report) -> None:
        def report() -> None:
            for event in events:
                self.sink(event)

        self._later(report)

    # the port ----------------------------------------------------------------------------------------------
    def engine_ids(self) -> set[int]:
        return set(self._engines)

    def is_local(self, engine: Engine) -> bool:
        return False  # no process of its own: nothing to signal or measure

    def poll(self) -> None:
        return None  # every change is reported when it happens

    def launch(self, gpu: str, host: str = "") -> str:
        set_id = f"inproc{next(self._sets)}"
        engine_id = next(self._ids)

        def registered() -> None:
            self._engines[engine_id] = _SimEngine(engine_id, set_id, gpu)
            self.sink(ev.EngineRegistered(engine_id))

        self._later(registered, self.start_s)
        return set_id

    def identify(self, engine_id: int) -> None:
        engine = self._engines.get(engine_id)
        if engine is None:
            self._report(ev.EngineFailed(engine_id, "identity: no such engine"))
            return
        self._report(ev.EngineIdentified(engine_id, ev.EngineIdentity(HOST, self.local_key, FIRST_PID + engine_id,
                                                                      engine.gpu, engine.set_id)))

    def load(self, engine: Engine, config: dict[str, Any]) -> None:
        self.token_s = float(config.get("sim_token_s") or self.token_s)
        self._report(ev.EngineLoaded(engine.id, sim.SimBackend(self.token_s).describe()))

    def start_serving(self, engine: Engine) -> None:
        self._report(ev.EngineServing(engine.id))

    def dispatch(self, engine: Engine, key: str, spec: JobSpec, deadline_s: float | None) -> None:
        sim_engine = self._engines.get(engine.id)
        if sim_engine is None:
            self._report(ev.JobReply(key, error=ev.TaskFailure("unreachable", f"engine {engine.id} gone at dispatch"),
                                     dispatched=False))
            return
        try:
            run = _plan(key, spec, self.token_s)
        except Exception as exc:  # as run_job: an error is a result, the engine stays usable
            self._report(ev.JobReply(key, result=JobResult("error", error=f"{type(exc).__name__}: {exc}")))
            return
        sim_engine.runs[key] = run
        self._report(ev.TaskStarted(key))
        run.timers.append(self._later(lambda: self._step(sim_engine, run), run.token_s))
        if engine.batched and deadline_s is not None:  # a batched engine ends a request at its deadline on its own
            run.timers.append(self._later(lambda: self._end(sim_engine, run, "interrupted", "deadline"), deadline_s))

    def abort(self, engine: Engine, key: str) -> None:
        sim_engine = self._engines.get(engine.id)
        run = sim_engine.runs.get(key) if sim_engine else None
        if sim_engine is not None and run is not None:
            self._later(lambda: self._end(sim_engine, run, "interrupted", "cancelled"))

    def sigint(self, engine: Engine, key: str) -> None:
        sim_engine = self._engines.get(engine.id)

        def delivered() -> None:
            self.sink(ev.SigintDelivered(key))
            if sim_engine is None:
                return
            for run in list(sim_engine.runs.values()):  # the main thread's KeyboardInterrupt ends what it runs
                if run.stuck != "hang-nosigint":
                    self._end(sim_engine, run, "interrupted", None, via_sigint=True)

        self._later(delivered)

    def probe(self, engine: Engine, key: str) -> None:
        sim_engine = self._engines.get(engine.id)
        if sim_engine is None:
            return  # a dead engine answers nothing
        if sim_engine.runs:
            sim_engine.probes.append(key)  # tasks on one engine run in order: behind its job
        else:
            self._report(ev.ProbeAnswered(key))

    def kill(self, engine: Engine) -> None:
        self._later(lambda: self._die(engine.id, "engine killed (SIGKILL)", killed=True))

    def order_host(self, agent: str, fence: tuple[int, ...] = (), stop: bool = False) -> None:
        log.warning("no join agents in-process: order to %s ignored", agent)

    def revoke_host(self, host_key: str, agent: str, engine_ids: tuple[int, ...]) -> None:
        log.warning("no keys in-process: revoking host %s revokes none", host_key)

    def retire(self, engine: Engine, release: bool) -> None:
        def retired() -> None:
            gone = self._engines.pop(engine.id, None)
            if gone is not None:
                for run in gone.runs.values():
                    _cancel(run)
            self.sink(ev.EngineRetired(engine.id))

        self._later(retired)

    async def stop(self, engines: list[Engine], busy: set[int]) -> None:
        self._stopped = True
        for sim_engine in self._engines.values():
            for run in sim_engine.runs.values():
                _cancel(run)
        self._engines.clear()

    # one job's life -------------------------------------------------------------------------------------------
    def _step(self, sim_engine: _SimEngine, run: _Run) -> None:
        if run.key not in sim_engine.runs:
            return
        if run.count >= run.limit:
            self._out_of_tokens(sim_engine, run)
            return
        piece = run.words[run.count % len(run.words)] + " "
        entry = sim.sim_logprob(piece, run.params.logprobs) if run.params.logprobs is not None else None
        if entry is not None:
            run.logprobs.append(entry)
        cut = run.stops.cut(run.text + piece)
        seq = run.count
        if cut is not None:  # the token that completes a stop string: what precedes the stop, if anything
            self.sink(ev.TokenPiece(run.key, seq, cut[len(run.text):], None, entry))
            run.text, run.count = cut, run.count + 1
            self._end(sim_engine, run, "completed", "stop")
            return
        run.text += piece
        run.count += 1
        self.sink(ev.TokenPiece(run.key, seq, piece, None, entry))
        if run.count >= run.limit:
            self._out_of_tokens(sim_engine, run)
        else:
            run.timers.append(self._later(lambda: self._step(sim_engine, run), run.token_s))

    def _out_of_tokens(self, sim_engine: _SimEngine, run: _Run) -> None:
        """Its last token is out: it completes, or its scripted end begins."""
        if run.end == "crash":
            self._die(sim_engine.id, "engine process exited (17)", killed=False)
        elif run.end in ("hang", "hang-nosigint"):
            run.stuck = run.end
        else:
            self._end(sim_engine, run, "completed", "length")

    def _end(self, sim_engine: _SimEngine, run: _Run, outcome: str, reason: str | None,
             via_sigint: bool = False) -> None:
        if sim_engine.runs.pop(run.key, None) is None:
            return
        _cancel(run)
        sim_engine.jobs_done += 1
        if outcome == "completed":
            done = sim.generation_of(run.text, run.count, "stop" if reason == "stop" else "length", run.words,
                                     run.params, run.logprobs)
            result = JobResult("completed", done.text, done.tokens, done.finish_reason, done.prompt_tokens,
                               logprobs=done.logprobs, prompt_logprobs=done.prompt_logprobs)
        else:
            result = JobResult("interrupted", run.text, run.count, reason=reason, via_sigint=via_sigint,
                               logprobs=tuple(run.logprobs))
        self.sink(ev.JobReply(run.key, result=replace(result, jobs_done=sim_engine.jobs_done)))
        if not sim_engine.runs:
            probes, sim_engine.probes = sim_engine.probes, []
            for key in probes:
                self.sink(ev.ProbeAnswered(key))

    def _die(self, engine_id: int, why: str, killed: bool) -> None:
        sim_engine = self._engines.pop(engine_id, None)
        if killed:
            self.sink(ev.EngineKilled(engine_id))
        if sim_engine is None:
            return
        for run in sim_engine.runs.values():
            _cancel(run)
            self.sink(ev.JobReply(run.key, error=ev.TaskFailure("engine_died", why)))
        self.sink(ev.EngineUnregistered(engine_id))


def _plan(key: str, spec: JobSpec, default_token_s: float) -> _Run:
    """The job as the sim backend would run it; raises what it would raise (a rejected request, a scripted error)."""
    params = spec.params
    sim.check_params(params)
    text, directives = sim.parse_directives(spec.prompt)
    words = text.split() or ["tok"]
    if "error" in directives:
        raise RuntimeError("sim: scripted error")
    if len(words) >= sim.MAX_MODEL_LEN:
        raise RequestRejected(f"the prompt has {len(words)} words, the sim context is {sim.MAX_MODEL_LEN}")
    end = next((d for d in ("hang", "hang-nosigint", "crash") if d in directives), None)
    limit = min(params.max_tokens, sim.PREFIX_TOKENS) if end else params.max_tokens
    return _Run(key, words, params, directives.get("slow") or default_token_s, limit, end, StopMatcher(params.stop))


def _cancel(run: _Run) -> None:
    for timer in run.timers:
        timer.cancel()
    run.timers.clear()
