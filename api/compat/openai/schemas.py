"""OpenAI's requests: ``POST /v1/chat/completions`` and ``POST /v1/completions``, as jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat.base import DropInRequest
from api.schemas import Message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool | None = None


class OpenAIRequest(DropInRequest):
    """What both endpoints take. Other OpenAI fields (``user``, ``tool_choice``, ...) are
    accepted and ignored."""

    job_params: ClassVar[Mapping[str, str]] = {
        f"options.{name}": name for name in ("temperature", "top_p", "max_tokens", "stop", "seed")
    }

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    background: bool | None = False
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported: a job streams one answer")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type", "text") != "text":
            raise ValueError("only the 'text' response format is supported")
        return value

    def job_fields(self) -> dict[str, Any]:
        max_tokens = self.max_completion_tokens or self.max_tokens
        options = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": max_tokens,
            "stop": self.stop,
            "seed": self.seed,
        }
        return {
            "options": {k: v for k, v in options.items() if v is not None},
            "metadata": self.metadata or {},
        }

    def compat(self) -> dict[str, Any]:
        return {"model": self.model, "include_usage": self.include_usage}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(OpenAIRequest):
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)

    def job_input(self) -> dict[str, Any]:
        return {"messages": self.messages, "tools": self.tools or []}


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("give one prompt: a job streams one answer")
        return value

    def job_input(self) -> dict[str, Any]:
        return {"prompt": self.prompt if isinstance(self.prompt, str) else self.prompt[0]}
