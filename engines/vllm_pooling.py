"""A pooling model under vLLM (``--runner pooling``, ``--convert embed|classify``, or a model vLLM runs as one):
its request parameters, its outputs as plain numbers, and what the front end needs to know of it.

A pooling job is one vLLM request with ``PoolingParams`` (``task``: ``embed``, ``classify``, ``token_embed``,
``token_classify``) added to the same ``LLMEngine`` and stepped like a generation: it ends after one forward
pass, with the pooler's output (an embedding, class probabilities, one row per token) in place of text. vLLM
itself checks the parameters against the model (``dimensions`` on a model without Matryoshka embeddings, a task
the model does not run): its message is the job's rejection.
"""

from __future__ import annotations

from typing import Any

from llmsup.engines.protocol import GenParams

POOLING_TASKS = ("embed", "classify", "token_embed", "token_classify")


def pooling_params(params: GenParams) -> Any:
    """vLLM's ``PoolingParams`` of a pooling job."""
    from vllm import PoolingParams

    return PoolingParams(task=params.pooling_task, dimensions=params.dimensions, use_activation=params.use_activation)


def pooled_output(out: Any) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """A finished ``PoolingRequestOutput``'s data, flattened, and its shape."""
    data = out.outputs.data
    shape = tuple(int(n) for n in data.shape)
    return tuple(float(x) for x in data.float().reshape(-1).tolist()), shape


def is_pooling(out: Any) -> bool:
    from vllm.outputs import PoolingRequestOutput

    return isinstance(out, PoolingRequestOutput)


def pooling_facts(llm: Any) -> dict[str, Any]:
    """What the front end checks pooling requests against: the tasks the model runs (``generate`` among them
    for a generative model), its embedding size, whether it takes ``dimensions`` (and which), its labels."""
    config = llm.llm_engine.model_config
    tasks = [str(t) for t in llm.supported_tasks]
    facts: dict[str, Any] = {"runner": str(config.runner_type), "supported_tasks": tasks}
    if config.runner_type != "pooling":
        return facts
    hf = config.hf_config
    labels = getattr(hf, "id2label", None) or {}
    facts.update({
        "pooling_task": str(getattr(llm, "pooling_task", None) or next((t for t in tasks if t in POOLING_TASKS), "")),
        "embedding_size": int(config.embedding_size),
        "matryoshka": bool(config.is_matryoshka),
        "matryoshka_dimensions": list(config.matryoshka_dimensions or []) or None,
        "num_labels": int(getattr(hf, "num_labels", 0) or 0),
        "labels": {str(k): str(v) for k, v in labels.items()},
    })
    return facts

