"""The AI SDK's chat request (``DefaultChatTransport``'s body), and its UI messages as a job's
chat messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from api.compat.base import DropInRequest

CHAT_ID_CHARS = 256
TOOL_STATES_WITH_INPUT = frozenset(
    {
        "input-available",
        "approval-requested",
        "approval-responded",
        "output-available",
        "output-error",
        "output-denied",
    }
)
"""A tool part's states once its input is complete: the call is part of the conversation."""


class UIMessage(BaseModel):
    """One UI message: ``parts`` are text, reasoning, tool and other parts; only text and tool
    parts reach the model (reasoning, files, sources and data parts are left out)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=256)
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = Field(max_length=10_000)


class ChatRequest(DropInRequest):
    """``POST /v1/ai-sdk/chat``: what ``DefaultChatTransport`` sends (``id``, ``messages``,
    ``trigger``, ``messageId``) and what the app adds in ``body``: ``model`` (``UPSTREAM/MODEL``),
    and optionally ``tools`` (OpenAI's function tools) and sampling options."""

    job_params: ClassVar[Mapping[str, str]] = {
        f"options.{name}": name for name in ("temperature", "top_p", "max_tokens", "stop", "seed")
    }

    id: str = Field(min_length=1, max_length=CHAT_ID_CHARS, description="the chat id")
    messages: list[UIMessage] = Field(min_length=1, max_length=10_000)
    trigger: Literal["submit-message", "regenerate-message"] | None = None
    messageId: str | None = Field(default=None, max_length=256)  # the SDK's name for it
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    _messages: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _convert(self) -> ChatRequest:
        self._messages = job_messages(self.messages)
        if not self._messages:
            raise ValueError("messages: no message has a text or tool part")
        return self

    def job_input(self) -> dict[str, Any]:
        return {"messages": self._messages, "tools": self.tools or []}

    def job_fields(self) -> dict[str, Any]:
        options = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
        }
        return {"options": {k: v for k, v in options.items() if v is not None}}

    @property
    def continued(self) -> UIMessage | None:
        """The assistant message this request continues (the last message, when it is the
        assistant's with an id, e.g. with a tool's output filled in), else None."""
        last = self.messages[-1]
        if last.role != "assistant" or not last.id or self.trigger == "regenerate-message":
            return None
        return last

    def compat(self) -> dict[str, Any]:
        """The model as named; for a continued message, its id and earlier parts, which a
        resume replays before the new ones."""
        info: dict[str, Any] = {"model": self.model, "chat": True}
        if (message := self.continued) is not None:
            info["message"] = {"id": message.id, "parts": message.parts}
        return info


def job_messages(messages: Sequence[UIMessage]) -> list[dict[str, Any]]:
    """UI messages as chat messages: a system or user message's text parts joined; an assistant
    message split into its steps (``step-start`` parts), each an assistant message with its
    text and ``tool_calls``, followed by a ``tool`` message per call with an output. Raises
    ``ValueError`` naming the message and part that is malformed."""
    out: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if message.role != "assistant":
            texts = [_text(part, f"{where}.parts[{i}]") for i, part in enumerate(message.parts)]
            if any(text is not None for text in texts):
                out.append({"role": message.role, "content": "".join(t or "" for t in texts)})
            continue
        step: list[tuple[int, dict[str, Any]]] = []
        for i, part in enumerate(message.parts):
            if part.get("type") == "step-start" and step:
                out += _assistant_step(step, where)
                step = []
            step.append((i, part))
        out += _assistant_step(step, where)
    return out


def _assistant_step(parts: list[tuple[int, dict[str, Any]]], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, part in parts:
        at = f"{where}.parts[{i}]"
        text = _text(part, at)
        if text is not None:
            texts.append(text)
            continue
        call = _tool_call(part, at)
        if call is None:
            continue
        calls.append(call)
        state = part.get("state")
        if state == "output-available":
            output = part.get("output")
            content = output if isinstance(output, str) else orjson.dumps(output).decode()
        elif state in ("output-error", "output-denied"):
            content = str(part.get("errorText") or "the tool call was not carried out")
        else:
            continue
        results.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return [message, *results]


def _text(part: Mapping[str, Any], at: str) -> str | None:
    if part.get("type") != "text":
        return None
    text = part.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{at}: a text part needs 'text', a string")
    return text


def _tool_call(part: Mapping[str, Any], at: str) -> dict[str, Any] | None:
    """An OpenAI ``tool_calls`` item of a tool part whose input is complete, else None."""
    kind = part.get("type")
    if not isinstance(kind, str):
        raise ValueError(f"{at}: a part needs 'type', a string")
    if kind == "dynamic-tool":
        name = part.get("toolName")
    elif kind.startswith("tool-"):
        name = kind.removeprefix("tool-")
    else:
        return None
    if part.get("state") not in TOOL_STATES_WITH_INPUT:
        return None
    call_id = part.get("toolCallId")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise ValueError(f"{at}: a tool part needs 'toolCallId' and a tool name")
    try:
        arguments = orjson.dumps(part.get("input", {})).decode()
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"{at}: the tool input cannot be stored: {exc}") from None
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
