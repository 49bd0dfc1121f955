"""The ``transformers`` backend: a causal LM run token by token in this process.

Generation is a plain loop over the model's forward with a KV cache, in the
caller's (main) thread, so a SIGINT raises ``KeyboardInterrupt`` between two
tokens (a token takes a few ms on the tiny CPU model) and every state of the
request lives in local variables: after an interrupt the model is ready for
the next request at once. :meth:`request_stop` stops it without a signal.

Config: ``model`` (dir or hub id; default the tiny local model under
``<run_dir>/models/tiny-llama``), ``gpu`` ("" = CPU), ``threads`` (torch
intra-op threads; default 1 on the CPU, which was ~3x faster than 2 on the tiny
model on a 2-core host, and lets one engine per core run side by side), and
``options``: ``dtype`` ("auto": float32 on CPU, bfloat16 on GPU), ``trust_remote_code``,
``max_model_len`` (caps the model's own context length), ``kv_cache`` ("auto": static on a GPU, dynamic on the
CPU; "static" or "dynamic") and ``compile`` ("auto": on a GPU with a static cache): engines/decode_cache.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from llmsup.engines.chat_template import chat_info
from llmsup.engines.decode_cache import DecodeCache, choose
from llmsup.engines.detokenize import TextAssembler
from llmsup.engines.generation_defaults import from_model_dir
from llmsup.engines.modelpath import resolve_model
from llmsup.engines.protocol import Generation, GenParams, RequestRejected, TokenCallback, TokenLogprob
from llmsup.engines.sampling import LogitsProcessor, make_generator, pick_next, token_logprob
from llmsup.engines.stopflag import StopFlag

log = logging.getLogger("llmsup.engine")
MAX_LOGPROBS = 20  # as vLLM's default max_logprobs
UNSUPPORTED = {
    "structured_outputs": "the transformers backend has no structured-output (guided) decoding: JSON mode, JSON "
                          "schemas, regexes, choices and grammars need the vllm backend",
}


class TransformersBackend:
    name = "transformers"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.options: dict[str, Any] = dict(config.get("options") or {})
        self.model_path = ""
        self.model: Any = None
        self.tokenizer: Any = None
        self.device = "cpu"
        self.dtype = ""
        self.threads = 0
        self.eos_ids: list[int] = []
        self.max_len = 0
        self.load_s = 0.0
        self._stop = StopFlag()
        self.decode: DecodeCache | None = None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # engine logs: no tqdm bars
        t0 = time.monotonic()
        path, local = resolve_model(self.config)
        use_gpu = bool(self.config.get("gpu")) and torch.cuda.is_available()
        self.device = "cuda" if use_gpu else "cpu"
        self.threads = int(self.config.get("threads") or (0 if use_gpu else 1))
        if self.threads:
            torch.set_num_threads(self.threads)
        dtype = self.options.get("dtype", "auto")
        torch_dtype = getattr(torch, dtype) if dtype != "auto" else (torch.bfloat16 if use_gpu else torch.float32)
        remote_code = bool(self.options.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local, trust_remote_code=remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=local, dtype=torch_dtype,
                                                     trust_remote_code=remote_code)
        self.model = model.to(self.device).eval()
        self.model_path, self.dtype = path, str(torch_dtype).removeprefix("torch.")
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        if self.options.get("max_model_len"):
            self.max_len = min(self.max_len, int(self.options["max_model_len"]))
        static = choose(self.options.get("kv_cache", "auto"), use_gpu)
        self.decode = DecodeCache(self.model, self.device, static, static and choose(self.options.get("compile"), use_gpu))
        self.load_s = time.monotonic() - t0
        log.info("transformers: loaded %s on %s (%s, %d threads, %s KV cache) in %.2fs", path, self.device,
                 self.dtype, self.threads, self.decode.kind, self.load_s)

    def request_stop(self) -> None:
        """Stop the running generation between two tokens (any thread); it raises StopRequested."""
        self._stop.set()

    def generate(self, prompt: str, params: GenParams, on_token: TokenCallback) -> Generation:
        import torch

        if params.structured is not None:
            raise RequestRejected(UNSUPPORTED["structured_outputs"])
        self._stop.clear()
        model, device, decode = self.model, self.device, self.decode
        assert decode is not None, "generate before load"
        prompt_ids: list[int] = list(params.prompt_token_ids) or self.tokenizer(prompt).input_ids
        budget = min(params.max_tokens, self.max_len - len(prompt_ids))
        if budget < 1:
            raise RequestRejected(f"This model's maximum context length is {self.max_len} tokens; the prompt has "
                                  f"{len(prompt_ids)} tokens, which leaves no room for output")
        text = TextAssembler(self.tokenizer, prompt_ids, params.stop, params.min_tokens)
        generator = make_generator(params, torch.device(device))
        process = LogitsProcessor(params, prompt_ids, int(model.config.vocab_size), torch.device(device))
        stop_ids = set(params.stop_token_ids)
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=device)
        logprobs: list[TokenLogprob] = []
        token_ids: list[int] = []
        prompt_lps: tuple[TokenLogprob, ...] = ()
        finish = "length"
        with torch.inference_mode():
            cache = decode.begin(len(prompt_ids) + budget)
            step_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
            position = 0
            for count in range(1, budget + 1):
                all_logits = decode.forward(step_ids, cache, position)
                position += step_ids.shape[1]
                if count == 1 and params.prompt_logprobs is not None:
                    prompt_lps = tuple(token_logprob(all_logits[i], prompt_ids[i + 1], params.prompt_logprobs,
                                                     self._decode_one) for i in range(len(prompt_ids) - 1))
                raw = all_logits[-1]
                self._stop.check()  # cooperative stop, between tokens
                logits = process(raw)
                if count <= params.min_tokens and len(eos):
                    logits = logits.clone() if logits is raw else logits
                    logits[eos] = float("-inf")
                token = pick_next(logits, params, generator)
                process.add(token)
                entry = token_logprob(raw, token, params.logprobs, self._decode_one) if (
                    params.logprobs is not None) else None
                if entry is not None:
                    logprobs.append(entry)
                if params.return_token_ids:
                    token_ids.append(token)
                text.add(token)
                ended = text.stopped or (token in self.eos_ids and not params.ignore_eos) or (
                    token in stop_ids and count > params.min_tokens)
                on_token(text.take(final=ended or count == budget), token, entry)
                if ended:
                    finish = "stop"
                    break
                step_ids = torch.tensor([[token]], dtype=torch.long, device=device)
        return Generation(text.text, text.tokens, finish, len(prompt_ids),  # type: ignore[arg-type]
                          logprobs=tuple(logprobs), prompt_logprobs=prompt_lps, token_ids=tuple(token_ids),
                          prompt_token_ids=tuple(prompt_ids) if params.return_token_ids else ())

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def abort(self) -> None:
        """Nothing survives an interrupted generate (its state is local); drop a pending stop."""
        self._stop.clear()

    def release(self) -> None:
        import gc

        self.model = None
        self.tokenizer = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        from llmsup.engines.tinymodel import is_tiny_model

        return {
            "backend": self.name,
            "model": self.model_path,
            "tiny_random_model": bool(self.model_path) and is_tiny_model(self.model_path),
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "max_len": self.max_len,
            "max_model_len": self.max_len,
            "max_logprobs": MAX_LOGPROBS,
            "kv_cache": self.decode.kind if self.decode is not None else None,
            "unsupported": dict(UNSUPPORTED),
            "sampling_defaults": from_model_dir(self.model_path),
            "load_s": round(self.load_s, 2),
            **(chat_info(self.tokenizer) if self.tokenizer is not None else {}),
        }
