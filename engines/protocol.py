"""The backend protocol: what an engine needs from a model runtime.

A backend is loaded once per engine process (engine-local state), generates
one request at a time through :meth:`Backend.generate`, calling ``on_token``
once per generated token, as it is produced, with the token's new text (may be
empty), its id and its logprob record (when the request asked for logprobs),
and is released before the engine
process goes away (so that child processes such as vLLM's EngineCore die with
it).

Interrupts: the watchdog sends SIGINT to the engine process. Python raises
``KeyboardInterrupt`` in the main thread wherever generation is; the engine
task catches it and calls :meth:`Backend.abort` so that the backend drops the
in-flight request and is ready for the next one.

The messages between the supervisor and its engines (job spec, result, control
ops, token stream) are in ``engines/messages.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]
StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar", "structural_tag"]
LOGPROB_FLOOR = -9999.0  # -inf (a masked token) as OpenAI servers report it: JSON has no infinity
REJECTED = "RequestRejected"  # error prefix of a request its backend refuses (the web layer answers 400)


FEATURES = ("penalties", "min_p", "logit_bias", "stop_token_ids", "allowed_token_ids", "logprobs", "prompt_logprobs",
            "structured_outputs", "token_prompts", "token_ids", "seed")


class RequestRejected(ValueError):
    """The request itself is invalid for this backend (a bad schema or regex, a prompt over the context):
    the job fails with ``RequestRejected: <why>`` and is not retried."""


@dataclass(frozen=True)
class TokenBias:
    """One ``logit_bias`` entry: added to the token's logit before sampling."""

    token_id: int
    bias: float


@dataclass(frozen=True)
class Structured:
    """A structured-output constraint (vLLM's ``structured_outputs``): ``spec`` is the JSON schema as JSON
    text (``json``), the regex, the grammar, the choices as a JSON list (``choice``), or vLLM's structural tag as
    JSON text (``structural_tag``: what its tool parsers ask for); ``json_object``: any JSON object."""

    kind: StructuredKind
    spec: str = ""


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters of one request, backend-neutral. Every field past ``min_tokens`` was added later
    with a neutral default, so an older record or message reads unchanged."""

    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: tuple[TokenBias, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    allowed_token_ids: tuple[int, ...] = ()  # sample only among these (empty: all)
    logprobs: int | None = None  # per generated token: its logprob and this many top alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens
    structured: Structured | None = None
    prompt_token_ids: tuple[int, ...] = ()  # the prompt as token ids (then ``prompt`` is only its text form)
    return_token_ids: bool = False  # the result carries the generated token ids
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    lora_name: str = ""  # a LoRA adapter to apply (vLLM's LoRARequest): its name, id and local directory
    lora_id: int = 0
    lora_path: str = ""
    pooling_task: str = ""  # a pooling model's task (vLLM's PoolingParams.task: embed, classify, token_embed...)
    dimensions: int | None = None  # embed: keep this many dimensions (Matryoshka models)
    use_activation: bool | None = None  # pooling: the pooler's activation (normalize, softmax); None: its default
    beam_width: int = 0  # above 0: beam search of this width (vLLM's), answering with the beam of rank beam_index
    beam_index: int = 0
    length_penalty: float = 1.0  # beam search: the score is the cumulative logprob / length ** length_penalty
    images: tuple[str, ...] = ()  # a multimodal model's images, as base64 data URLs, in the prompt's order

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenParams":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and v is not None}
        if "stop" in known:
            stop = known["stop"]
            known["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        for name in ("stop_token_ids", "prompt_token_ids", "allowed_token_ids", "images"):
            if name in known:
                known[name] = tuple(known[name])
        if "logit_bias" in known:
            known["logit_bias"] = tuple(b if isinstance(b, TokenBias) else TokenBias(**b) for b in known["logit_bias"])
        if isinstance(known.get("structured"), dict):
            known["structured"] = Structured(**known["structured"])
        return cls(**known)

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str  # the token's own text
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One token of a generation (or prompt) with its logprob, rank and the top alternatives at its place."""

    token_id: int
    token: str
    logprob: float
    rank: int = 0  # 1 = the likeliest token (0: not known)
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Generation:
    """The outcome of a completed generate call."""

    text: str
    tokens: int
    finish_reason: FinishReason
    prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per generated token, when asked
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # prompt tokens 1.. (the first has none), when asked
    token_ids: tuple[int, ...] = ()  # when asked (``return_token_ids``)
    prompt_token_ids: tuple[int, ...] = ()  # when asked
    pooled: tuple[float, ...] = ()  # a pooling request's output, flattened (row-major)
    pooled_shape: tuple[int, ...] = ()  # its shape: (dim,) for one vector, (tokens, dim) per token


class TokenCallback(Protocol):
    """Called once per generated token: its new ``text`` ("" while the detokenizer holds back an incomplete
    character or a possible stop string), its ``token_id`` (None: the backend has no vocabulary) and its
    ``logprob`` record (only when the request asked for logprobs)."""

    def __call__(self, text: str, token_id: int | None = None, logprob: TokenLogprob | None = None, /) -> None: ...


def clamp_logprob(value: float) -> float:
    return value if value > LOGPROB_FLOOR else LOGPROB_FLOOR


@runtime_checkable
class Backend(Protocol):
    """A model runtime living inside one engine process."""

    name: str

    def load(self) -> None:
        """Load the model. Called once, when the engine is initialised."""

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        """Generate a completion, calling ``on_token`` once per generated token (see :class:`TokenCallback`)."""

    def abort(self) -> None:
        """Drop whatever request is in flight (called after KeyboardInterrupt)."""

    def release(self) -> None:
        """Free the model and stop every child process the backend started."""

    def describe(self) -> dict[str, Any]:
        """Backend name, model, device and anything an operator wants to see; for the front end also
        ``max_model_len`` (context length in tokens), ``max_logprobs`` and ``unsupported``: request features
        (see :data:`FEATURES`) this backend cannot honour, each with the reason (said in a 400)."""


class StopMatcher:
    """Finds the earliest stop sequence in generated text (shared by backends)."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)

    def cut(self, text: str) -> str | None:
        """Return ``text`` truncated before the first stop sequence, or None."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return text[: min(hits)] if hits else None


@dataclass(frozen=True)
class StepOutput:
    """What one engine step produced for one request of a batch."""

    key: str
    text: str  # new text since the last step ("" if the new tokens decode to nothing yet)
    new_tokens: int
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # of this step's new tokens, when asked
    token_ids: tuple[int, ...] = ()  # this step's new token ids, when asked
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # once, with the first step, when asked
    prompt_token_ids: tuple[int, ...] = ()  # once, with the first step, when asked
    pooled: tuple[float, ...] = ()  # a pooling request's output (flattened), when it finished
    pooled_shape: tuple[int, ...] = ()


@runtime_checkable
class BatchBackend(Protocol):
    """A backend that runs many requests at once (continuous batching).

    A request added while others run joins the batch at the next step.
    """

    def add_request(self, key: str, prompt: str, params: GenParams) -> None:
        """Queue a request; it joins the running batch at the next step."""

    def step(self) -> list[StepOutput]:
        """Advance every active request by one step."""

    def abort_requests(self, keys: list[str]) -> None:
        """Drop these requests (their slots are free at the next step); the others go on."""
