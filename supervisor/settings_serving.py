"""Settings of what the OpenAI routes serve beyond plain generation: chat-template handling, vLLM's tool-call and
reasoning parsers, LoRA adapters. :class:`ServingFeatures` is a base of
:class:`~llmsup.supervisor.settings.Settings` (each field is a flag, a variable and a key like any other)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from llmsup.supervisor.settings_meta import MODEL, cli


class ServingFeatures(BaseSettings):
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "auto", description="message content reaches the chat template as a string or as OpenAI's parts; auto: as "
        "the template reads it (vLLM's rule)", json_schema_extra=cli(MODEL))
    trust_request_chat_template: bool = Field(False, description="let a chat request bring its own chat_template "
                                              "(else such a request is a 400)", json_schema_extra=cli(MODEL))
    enable_auto_tool_choice: bool = Field(False, description="tool_choice auto: the model decides to call tools "
                                          "(needs tool_call_parser)", json_schema_extra=cli(MODEL))
    tool_call_parser: str | None = Field(None, description="vLLM's tool-call parser (hermes, llama3_json, mistral, "
                                         "pythonic...)", json_schema_extra=cli(MODEL))
    reasoning_parser: str | None = Field(None, description="vLLM's reasoning parser (deepseek_r1, qwen3...): reasoning "
                                         "goes to reasoning_content", json_schema_extra=cli(MODEL))
    lora_modules: Annotated[list[str], NoDecode] = Field(default_factory=list, description="LoRA adapters: name=path "
        "(comma-separated); a request's model picks one", json_schema_extra=cli(MODEL))
    max_loras: int = Field(1, ge=1, le=64, description="LoRA adapters in a batch", json_schema_extra=cli(MODEL))
    max_lora_rank: int = Field(16, ge=1, le=512, description="highest LoRA rank", json_schema_extra=cli(MODEL))

    @field_validator("lora_modules", mode="before")
    @classmethod
    def _split_loras(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [entry.strip() for entry in value.split(",") if entry.strip()]
        return value

    @model_validator(mode="after")
    def _check_features(self) -> "ServingFeatures":
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (--tool-call-parser NAME)")
        if any(not n.partition("=")[0] or not n.partition("=")[2] for n in self.lora_modules):
            raise ValueError("lora_modules takes name=path entries")
        return self

    def lora_adapters(self) -> dict[str, str]:
        """name -> directory of each ``lora_modules`` entry."""
        return {name.strip(): path.strip() for name, _, path in (e.partition("=") for e in self.lora_modules)}
