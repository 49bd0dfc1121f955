"""The ``vllm`` backend: ``vllm.LLM`` driven step by step, one request at a time.

``generate`` adds one request to ``llm.llm_engine`` with DELTA outputs and
steps the engine itself, so every new piece of text reaches ``on_token`` as
soon as vLLM produces it. Each step runs under :class:`DeferredSigint`, so a
SIGINT lands between two steps (never inside the scheduler's bookkeeping).

Interrupts: after a ``KeyboardInterrupt`` the request is still alive inside
EngineCore, and the next request would wait behind it (or hang): :meth:`abort`
aborts every in-flight request (``LLMEngine.abort_request(..., internal=True)``
on the output processor's request states), which frees the engine at once.

Release: :meth:`release` shuts EngineCore down (with multiprocessing on, its
EngineCore and worker processes would otherwise outlive the engine process).

Settings per device: see :mod:`engines.vllm_settings`.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import time
from typing import Any

from llmsup.engines.generation_defaults import from_vllm
from llmsup.engines.modelpath import resolve_model
from llmsup.engines.protocol import Generation, GenParams, RequestRejected, StepOutput, TokenCallback, TokenLogprob
from llmsup.engines.sigdefer import DeferredSigint
from llmsup.engines.stopflag import StopFlag
from llmsup.engines.torch_compat import child_environment
from llmsup.engines.vllm_beam import BeamJob
from llmsup.engines.vllm_outputs import engine_prompt, prompt_logprobs, sampling_params, token_logprobs
from llmsup.engines.vllm_pooling import is_pooling, pooled_output, pooling_facts, pooling_params
from llmsup.engines.vllm_settings import cpu_threads, llm_kwargs, vllm_env, with_default_max_num_seqs

log = logging.getLogger("llmsup.engine")
_REQUEST_IDS = itertools.count()


def _client_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (a bad schema, regex, grammar, logprobs, a prompt too long)."""
    from vllm.exceptions import VLLMClientError

    return (VLLMClientError, ValueError, TypeError)


MAX_IMAGES = 32  # placeholders published for at most this many images a prompt (vLLM's default limit: 999)


def image_facts(config: Any) -> dict[str, Any]:
    """What the front end needs to put a multimodal model's images in a chat prompt as vLLM's server does: the most
    images a prompt may carry (vLLM's ``limit_mm_per_prompt``) and the model's placeholder text for the i-th image
    (``get_placeholder_str``; None where the model's chat template places its own)."""
    from vllm.model_executor.model_loader import get_model_cls

    mm = config.multimodal_config
    limit = int(mm.get_limit_per_prompt("image")) if mm is not None else 0
    try:
        cls = get_model_cls(config)
        placeholders = [cls.get_placeholder_str("image", i) for i in range(1, min(limit, MAX_IMAGES) + 1)]
    except Exception as exc:  # noqa: BLE001 (no images then: the model takes another modality, or vLLM cannot say)
        log.info("vllm: the model takes no images here (%s: %s)", type(exc).__name__, exc)
        placeholders, limit = [], 0
    return {"max_images": limit, "image_placeholders": placeholders}


def lora_request(params: GenParams) -> Any:
    """vLLM's LoRARequest for a request that names an adapter, else None."""
    if not params.lora_name:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(params.lora_name, params.lora_id, params.lora_path)


class EngineDead(RuntimeError):
    """vLLM's EngineCore is gone (e.g. a SIGINT to the whole process group): this engine must be replaced."""

    transient = True  # the job itself is fine: retry it on another engine
    engine_dead = True  # this engine cannot serve again: recycle it


class VLLMBackend:
    name = "vllm"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options: dict[str, Any] = dict(config.get("options") or {})
        self.llm: Any = None
        self.model_path = ""
        self.on_gpu = False
        self.kwargs: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.load_s = 0.0
        self.dead = False
        self.threads: int | None = None
        self._stop = StopFlag()
        self._set_num_threads: Any = None  # torch's own, which vLLM's CPU worker replaces
        self._batch_params: dict[str, GenParams] = {}  # batched requests that asked for logprobs or token ids
        self.pooling: dict[str, Any] = {}  # the model's tasks (and, for a pooling model, its pooler's facts)
        self.warm_up_params: GenParams | None = None  # a pooling model warms up with its own task
        self._beams: dict[str, BeamJob] = {}  # batched beam searches by job key

    def load(self) -> None:
        import torch

        t0 = time.monotonic()
        path, _local = resolve_model(self.config)
        self.on_gpu = bool(self.config.get("gpu")) and torch.cuda.is_available()
        self.env = vllm_env(self.options, self.on_gpu, dict(os.environ))
        os.environ.update(self.env)
        child_environment(os.environ)  # vLLM's spawned EngineCore hides what this process hid
        threads = self.config.get("threads") or (
            None if self.on_gpu else cpu_threads(int(self.config.get("engines_on_host") or 1)))
        self.threads = threads
        if threads and not self.on_gpu:
            os.environ["OMP_NUM_THREADS"] = str(threads)  # vLLM then leaves torch's thread count alone
            torch.set_num_threads(int(threads))
        self._set_num_threads = torch.set_num_threads
        from vllm import LLM

        self.kwargs = with_default_max_num_seqs(llm_kwargs(path, self.options, self.on_gpu, self.config.get("gpu")))
        self.llm = LLM(**self.kwargs)
        self.model_path = path
        self.pooling = pooling_facts(self.llm)
        if self.pooling.get("pooling_task"):
            self.warm_up_params = GenParams(max_tokens=1, pooling_task=self.pooling["pooling_task"])
        self.load_s = time.monotonic() - t0
        log.info("vllm: loaded %s in %.2fs, env %s, args %s", path, self.load_s, self.env, self.kwargs)

    def request_stop(self) -> None:
        """Stop the running generation between two steps (any thread); it raises StopRequested."""
        self._stop.set()

    def _sampling_params(self, params: GenParams) -> Any:
        try:
            return pooling_params(params) if params.pooling_task else sampling_params(params)
        except _client_errors() as exc:  # vLLM's own checks of the request
            raise RequestRejected(str(exc)) from None

    def _add(self, request_id: str, prompt: str, params: GenParams) -> None:
        """Add one request; a request vLLM refuses (bad schema, regex, grammar, logprobs...) is rejected."""
        eng = self.llm.llm_engine
        sampling = self._sampling_params(params)
        try:
            eng.add_request(request_id, self._render(engine_prompt(prompt, params)), sampling,
                            lora_request=lora_request(params))
        except _client_errors() as exc:
            raise RequestRejected(str(exc)) from None

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return self._generate(prompt, params, on_token)
        except EngineDeadError as exc:
            self.dead = True
            raise EngineDead("vLLM EngineCore died; restart this engine") from exc

    def _generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:  # noqa: C901 - one step loop with its tokens, logprobs, token ids and finish
        eng = self.llm.llm_engine
        self._stop.clear()
        if eng.output_processor.request_states:
            log.warning(
                "vllm: %d stale requests in flight (no abort after an interrupt?): aborting them",
                len(eng.output_processor.request_states),
            )
            self.abort()
        request_id = f"llmsup-{os.getpid()}-{next(_REQUEST_IDS)}"
        if params.beam_width:
            return self._beam_search(request_id, prompt, params, on_token)
        with DeferredSigint():
            self._add(request_id, prompt, params)
        text: list[str] = []
        tokens = 0
        logprobs: list[TokenLogprob] = []
        token_ids: list[int] = []
        prompt_lps: tuple[TokenLogprob, ...] = ()
        while True:
            self._stop.check()
            with DeferredSigint():
                outputs = eng.step()
            if not outputs and not eng.has_unfinished_requests():
                raise RuntimeError(f"vLLM request {request_id} vanished (aborted from elsewhere?)")
            for out in outputs:
                if out.request_id != request_id:
                    continue
                if is_pooling(out):
                    if not out.finished:
                        continue
                    pooled, shape = pooled_output(out)
                    return Generation("", 0, "stop", len(out.prompt_token_ids or ()), pooled=pooled, pooled_shape=shape)
                delta = out.outputs[0]
                ids = list(delta.token_ids)
                step_logprobs = token_logprobs(ids, delta.logprobs, params.logprobs)
                for i, token_id in enumerate(ids):  # several tokens in one step: one call per token, text with the last
                    on_token(delta.text if i == len(ids) - 1 else "", token_id,
                             step_logprobs[i] if i < len(step_logprobs) else None)
                if delta.text and not ids:
                    on_token(delta.text)
                tokens += len(ids)
                text.append(delta.text)
                logprobs.extend(step_logprobs)
                if params.return_token_ids:
                    token_ids.extend(ids)
                if out.prompt_logprobs and not prompt_lps:
                    prompt_lps = prompt_logprobs(out.prompt_token_ids or (), out.prompt_logprobs, params.prompt_logprobs)
                if out.finished:
                    reason = delta.finish_reason
                    if reason not in ("stop", "length"):
                        raise RuntimeError(f"vLLM ended the request with finish_reason={reason!r}")
                    prompt_ids = tuple(out.prompt_token_ids or ())
                    return Generation("".join(text), tokens, reason, len(prompt_ids), logprobs=tuple(logprobs),
                                      prompt_logprobs=prompt_lps, token_ids=tuple(token_ids),
                                      prompt_token_ids=prompt_ids if params.return_token_ids else ())

    # beam search (engines.vllm_beam): rounds of one-token requests ------------------------------
    def _start_beam(self, key: str, prompt: str, params: GenParams) -> BeamJob:
        try:
            rendered = self._render(engine_prompt(prompt, params))
        except _client_errors() as exc:
            raise RequestRejected(str(exc)) from None
        ids = rendered.get("prompt_token_ids") if isinstance(rendered, dict) else None
        if not ids:
            raise RequestRejected("beam search needs a prompt of tokens")
        job = BeamJob(key, list(ids), params, self.llm.get_tokenizer())
        self._beam_round(job)
        return job

    def _beam_round(self, job: BeamJob) -> None:
        eng, sampling = self.llm.llm_engine, job.sampling()
        for rid, beam_prompt in job.next_round():
            try:
                eng.add_request(rid, beam_prompt, sampling, lora_request=lora_request(job.params))
            except _client_errors() as exc:
                raise RequestRejected(str(exc)) from None

    def _beam_search(self, key: str, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        """One beam search alone on the engine (an unbatched engine)."""
        with DeferredSigint():
            job = self._start_beam(key, prompt, params)
        eng = self.llm.llm_engine
        while True:
            self._stop.check()
            with DeferredSigint():
                outputs = eng.step()
                for out in outputs:
                    if out.finished and job.owns(out.request_id):
                        job.take(out.request_id, out)
                if job.current.done:
                    if job.advance():
                        break
                    self._beam_round(job)
        answer = job.answer()
        for i, token_id in enumerate(answer.token_ids):
            on_token(answer.text if i == len(answer.token_ids) - 1 else "", token_id)
        return Generation(answer.text, len(answer.token_ids), answer.finish_reason, answer.prompt_tokens,
                          token_ids=answer.token_ids if params.return_token_ids else ())

    def _beam_step(self, out: Any) -> StepOutput | None:
        """A batched beam search's request answered: the search's end, when this was its last."""
        job = next((j for j in self._beams.values() if j.owns(out.request_id)), None)
        if job is None or not out.finished:
            return None
        job.take(out.request_id, out)
        if not job.current.done:
            return None
        if not job.advance():
            self._beam_round(job)
            return None
        del self._beams[job.key]
        answer = job.answer()
        return StepOutput(job.key, answer.text, len(answer.token_ids), True, answer.finish_reason, answer.prompt_tokens,
                          token_ids=answer.token_ids if job.params.return_token_ids else ())

    def _render(self, prompt: str) -> Any:
        """The prompt as vLLM's offline API renders it (falls back to the raw string)."""
        render = getattr(self.llm, "_preprocess_cmpl_one", None)
        return render(prompt) if render is not None else prompt

    def abort(self) -> None:
        """Abort every request in flight, so the next generate starts at once."""
        self._stop.clear()
        self._beams.clear()
        if self.llm is None:
            return
        eng = self.llm.llm_engine
        with DeferredSigint():
            in_flight = list(eng.output_processor.request_states)
            try:
                if in_flight:
                    eng.abort_request(in_flight, internal=True)
            except Exception as exc:  # noqa: BLE001 (best effort: a dead EngineCore cannot take it; KeyboardInterrupt passes)
                log.warning("vllm: abort of %d request(s) failed: %s: %s", len(in_flight), type(exc).__name__, exc)
                return
        if in_flight:
            log.info("vllm: aborted %d in-flight request(s)", len(in_flight))

    # batching (engines.batch): continuous batching in one LLMEngine ---------------------------
    def add_request(self, key: str, prompt: str, params: GenParams) -> None:
        """Queue a request under the job's key; it joins the running batch at the next step."""
        if params.beam_width:
            self._beams[key] = self._start_beam(key, prompt, params)
            return
        self._add(key, prompt, params)
        self._batch_params[key] = params

    def step(self) -> list[StepOutput]:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            outputs = self.llm.llm_engine.step()
        except EngineDeadError as exc:
            self.dead = True
            raise EngineDead("vLLM EngineCore died; restart this engine") from exc
        steps = []
        for out in outputs:
            if self._beams and "#beam" in out.request_id:
                beam = self._beam_step(out)
                if beam is not None:
                    steps.append(beam)
                continue
            if is_pooling(out):
                self._batch_params.pop(out.request_id, None)
                pooled, shape = pooled_output(out) if out.finished else ((), ())
                steps.append(StepOutput(out.request_id, "", 0, out.finished, "stop" if out.finished else None,
                                        len(out.prompt_token_ids or ()), pooled=pooled, pooled_shape=shape))
                continue
            delta = out.outputs[0]
            reason = delta.finish_reason if out.finished else None
            if out.finished and reason not in ("stop", "length"):
                reason = "stop"
            params = self._batch_params.pop(out.request_id, None) if out.finished else self._batch_params.get(
                out.request_id)
            steps.append(self._step_output(out, delta, reason, params))
        return steps

    @staticmethod
    def _step_output(out: Any, delta: Any, reason: Any, params: GenParams | None) -> StepOutput:
        prompt_ids = tuple(out.prompt_token_ids or ())
        if params is None or (params.logprobs is None and params.prompt_logprobs is None
                              and not params.return_token_ids):
            return StepOutput(out.request_id, delta.text, len(delta.token_ids), out.finished, reason, len(prompt_ids))
        return StepOutput(
            out.request_id, delta.text, len(delta.token_ids), out.finished, reason, len(prompt_ids),
            logprobs=token_logprobs(delta.token_ids, delta.logprobs, params.logprobs),
            token_ids=tuple(delta.token_ids) if params.return_token_ids else (),
            prompt_logprobs=prompt_logprobs(prompt_ids, out.prompt_logprobs, params.prompt_logprobs),
            prompt_token_ids=prompt_ids if params.return_token_ids and out.finished else (),
        )

    def abort_requests(self, keys: list[str]) -> None:
        """Abort these requests alone (external ids; a beam search: its round's requests); the rest of the batch
        goes on."""
        if self.llm is None or not keys:
            return
        eng = self.llm.llm_engine
        ids = list(keys)
        for key in keys:
            self._batch_params.pop(key, None)
            beam = self._beams.pop(key, None)
            if beam is not None:
                ids += [rid for rid in beam.current.beams if rid not in beam.current.answers]
        live = [k for k in ids if k in eng.output_processor.external_req_ids] if hasattr(
            eng.output_processor, "external_req_ids") else ids
        if live:
            eng.abort_request(live, internal=False)

    def release(self) -> None:
        """Shut EngineCore (and its processes, with multiprocessing on) down and free the model."""
        if self.llm is None:
            return
        t0 = time.monotonic()
        llm, self.llm = self.llm, None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            self._restore_torch_threads()
        log.info("vllm: engine core shut down in %.2fs", time.monotonic() - t0)

    def _restore_torch_threads(self) -> None:
        if self._set_num_threads is not None:
            import torch

            torch.set_num_threads = self._set_num_threads

    def describe(self) -> dict[str, Any]:
        from llmsup.engines.tinymodel import is_tiny_model

        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("model", "tokenizer")}
        return {
            "backend": self.name,
            "model": self.model_path,
            "tiny_random_model": bool(self.model_path) and is_tiny_model(self.model_path),
            "device": "cuda" if self.on_gpu else "cpu",
            "multiprocessing": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "1",
            "env": dict(self.env),
            "llm_args": kwargs,
            "load_s": round(self.load_s, 2),
            "threads": self.threads,
            "dead": self.dead,
            **self._limits(),
            **self.pooling,
            "unsupported": {},
            **self._chat_info(),
        }

    def _limits(self) -> dict[str, Any]:
        """The context length and logprobs limit the engine enforces (the front end checks requests against them)."""
        if self.llm is None:
            return {}
        import vllm

        config = self.llm.llm_engine.model_config
        scheduler = getattr(getattr(self.llm.llm_engine, "vllm_config", None), "scheduler_config", None)
        seqs = getattr(scheduler, "max_num_seqs", None) or self.kwargs.get("max_num_seqs")
        return {"max_model_len": int(config.max_model_len), "max_logprobs": int(config.max_logprobs),
                "vllm_version": str(vllm.__version__), "multimodal": bool(config.is_multimodal_model),
                **({"max_num_seqs": int(seqs)} if seqs else {}), "sampling_defaults": from_vllm(self.llm),
                **(image_facts(config) if config.is_multimodal_model else {})}

    def _chat_info(self) -> dict[str, Any]:
        from llmsup.engines.chat_template import chat_info

        if self.llm is None:
            return {}
        try:
            return chat_info(self.llm.get_tokenizer())
        except Exception:  # a tokenizer without a template: the front end uses its default
            return {}
