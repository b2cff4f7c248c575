"""Request and response bodies of the API, validated with pydantic."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_METADATA_BYTES = 16 * 1024


class Message(BaseModel):
    """A chat message, passed to the upstream as it is (extra fields such as
    ``tool_calls`` or ``tool_call_id`` included)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class Options(BaseModel):
    # strict: "0.5" is not a temperature, nor true a token count (JSON ints still pass as floats)
    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: list[str] | None = Field(default=None, max_length=MAX_STOP)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        for stop in value or []:
            if not stop or len(stop) > MAX_STOP_CHARS:
                raise ValueError(f"each stop sequence must be 1 to {MAX_STOP_CHARS} characters")
        return value


class JobRequest(BaseModel):
    """``POST /v1/jobs``: exactly one of ``messages`` and ``prompt``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "upstream": "local",
                    "model": "llama3.2",
                    "messages": [{"role": "user", "content": "Tell me a joke"}],
                    "options": {"temperature": 0.8, "max_tokens": 500, "stop": ["\n\n"]},
                    "metadata": {"user": "42"},
                }
            ]
        },
    )

    upstream: str | None = Field(default=None, min_length=1, max_length=128)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=10_000)
    prompt: str | None = None
    options: Options = Field(default_factory=Options)
    tools: list[dict[str, Any]] = Field(default_factory=list, max_length=128)
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, max_length=64
    )

    @model_validator(mode="after")
    def _one_input(self) -> JobRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' and 'prompt'")
        if self.tools and self.prompt is not None:
            raise ValueError("'tools' needs 'messages', not 'prompt'")
        return self

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # a lone surrogate, which UTF-8 cannot carry
            raise ValueError("metadata must be valid Unicode text") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value


class JobCreated(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    events_url: str
    created_at: str


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Job(BaseModel):
    """A job's state; ``text`` is everything streamed so far."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    upstream: str
    model: str | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    last_event_id: str | None
    attempt: int
    metadata: dict[str, Any]


class UpstreamInfo(BaseModel):
    name: str
    kind: Literal["openai", "ollama", "sse"]
    default_model: str | None
    default: bool


class UpstreamList(BaseModel):
    object: Literal["list"]
    data: list[UpstreamInfo]
