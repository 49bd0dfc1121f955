"""LoRA adapters served by name, as vLLM's ``--lora-modules name=path``: a request whose ``model`` is an adapter's
name runs on the base model with that adapter (vLLM's ``LoRARequest``, carried in the job's parameters, so the
job keeps its deadline, retry and accounting). ``/v1/models`` lists each adapter with ``parent`` = the base
model. ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (vLLM's routes and messages) change the set
at run time, behind the admin token (vLLM guards them with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``). An adapter's
directory must be readable where the engines run (checked here for a directory on this host)."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from pydantic import Field

from llmsup.supervisor.port import ControlPlane
from llmsup.web.auth import require_admin
from llmsup.web.deps import SupervisorDep
from llmsup.web.errors import OpenAIHTTPError
from llmsup.web.openai_responses import OpenAIError
from llmsup.web.openai_schemas import Lenient

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_admin)])
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": OpenAIError, "description": "OpenAI-style error",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}}
    for code in (400, 401, 403, 404, 413)}
_IDS = itertools.count(1)


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    lora_id: int

    def params(self) -> dict[str, object]:
        """The job parameters that select it."""
        return {"lora_name": self.name, "lora_id": self.lora_id, "lora_path": self.path}


_REGISTRIES: weakref.WeakKeyDictionary[ControlPlane, dict[str, Adapter]] = weakref.WeakKeyDictionary()


def adapters(sup: ControlPlane) -> dict[str, Adapter]:
    """The server's adapters by name (``lora_modules`` first, then those loaded at run time)."""
    if sup not in _REGISTRIES:
        loras: dict[str, str] = sup.settings.lora_adapters()
        _REGISTRIES[sup] = {name: Adapter(name, path, next(_IDS)) for name, path in loras.items()}
    return _REGISTRIES[sup]


class LoadLoRA(Lenient):
    lora_name: Annotated[str, Field(min_length=1, max_length=256)]
    lora_path: Annotated[str, Field(min_length=1, max_length=4096)]


class UnloadLoRA(Lenient):
    lora_name: Annotated[str, Field(min_length=1, max_length=256)]
    lora_int_id: int | None = None


@router.post("/load_lora_adapter", response_class=PlainTextResponse, responses=ERRORS)
async def load_lora_adapter(body: LoadLoRA, sup: SupervisorDep) -> str:
    loaded = adapters(sup)
    if body.lora_name in loaded:
        raise OpenAIHTTPError(400, f"The lora adapter '{body.lora_name}' has already been loaded.", param="lora_name")
    if body.lora_name in _base_names(sup):
        raise OpenAIHTTPError(400, f"'{body.lora_name}' is the base model's name", param="lora_name")
    try:
        found = (Path(body.lora_path) / "adapter_config.json").is_file()
    except OSError:  # a name too long, or not one a file system takes
        found = False
    if not found:
        raise OpenAIHTTPError(400, f"No adapter found at {body.lora_path} (no adapter_config.json)", param="lora_path")
    loaded[body.lora_name] = Adapter(body.lora_name, body.lora_path, next(_IDS))
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/unload_lora_adapter", response_class=PlainTextResponse, responses=ERRORS)
async def unload_lora_adapter(body: UnloadLoRA, sup: SupervisorDep) -> str:
    if adapters(sup).pop(body.lora_name, None) is None:
        raise OpenAIHTTPError(404, f"The lora adapter '{body.lora_name}' cannot be found.", code="not_found",
                              param="lora_name")
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."


def _base_names(sup: ControlPlane) -> list[str]:
    return sup.served_model_names()
