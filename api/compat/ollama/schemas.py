"""Ollama's requests: ``POST /api/chat`` and ``POST /api/generate``, as jobs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat.base import DropInRequest
from api.schemas import Message


class Options(BaseModel):
    """The model options tokenrelay maps; others (``num_ctx``, ``top_k``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = None
    top_p: float | None = None
    num_predict: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class OllamaRequest(DropInRequest):
    """What both endpoints take. Other fields (``keep_alive``, ``think``, ...) are ignored."""

    job_params: ClassVar[Mapping[str, str]] = {
        "options.max_tokens": "options.num_predict",
        **{
            f"options.{name}": f"options.{name}"
            for name in ("temperature", "top_p", "stop", "seed")
        },
    }

    stream: bool | None = True
    options: Options | None = None
    format: Any = None

    @field_validator("format")
    @classmethod
    def _no_format(cls, value: Any) -> Any:
        if value:
            raise ValueError("structured output ('format') is not supported")
        return value

    @property
    def empty(self) -> bool:
        """Nothing to generate (no messages, no prompt): Ollama answers at once that the model
        is loaded, and no job is made."""
        raise NotImplementedError

    @property
    def streams(self) -> bool:
        """NDJSON unless ``"stream": false`` (Ollama's default is to stream)."""
        return self.stream is not False

    def job_fields(self) -> dict[str, Any]:
        o = self.options or Options()
        max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
        options = {
            "temperature": o.temperature,
            "top_p": o.top_p,
            "max_tokens": max_tokens,  # Ollama's -1 (no limit) and -2 (fill the context): none
            "stop": o.stop,
            "seed": o.seed,
        }
        return {"options": {k: v for k, v in options.items() if v is not None}}


class ChatRequest(OllamaRequest):
    messages: list[Message] = Field(default_factory=list, max_length=10_000)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)

    def job_input(self) -> dict[str, Any]:
        return {"messages": self.messages, "tools": self.tools or []}

    @property
    def empty(self) -> bool:
        return not self.messages


class GenerateRequest(OllamaRequest):
    prompt: str | None = None

    def job_input(self) -> dict[str, Any]:
        return {"prompt": self.prompt}

    @property
    def empty(self) -> bool:
        return not self.prompt
