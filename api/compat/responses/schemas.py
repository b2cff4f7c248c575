"""OpenAI's Responses API requests: ``POST /v1/responses``, as a job of chat messages, and
back (a job's conversation, its input as items).

The conversation a job sends is ``[instructions] + history + input``: the history is what an
earlier response (``previous_response_id``) sent and answered, the input this request's items
as chat messages (``function_call`` items become an assistant's ``tool_calls``,
``function_call_output`` items ``tool`` messages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)

from api.compat.base import DropInRequest
from api.compat.responses.response import ResponsesView, message_item
from tokenrelay.wire import JobRecord


class ContentPart(BaseModel):
    """Text in a message: ``input_text`` (the client's) or ``output_text`` (a model's, fed
    back); ``annotations`` and the like are ignored."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text"]
    text: str


def _text(content: str | Sequence[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class MessageItem(BaseModel):
    """A message: ``{role, content}``, ``type: "message"`` optional; an output message fed back
    (``id``, ``status``) is one too."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(BaseModel):
    """A tool call the model made (fed back from an earlier response's output)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """A tool's result, for the call ``call_id``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ContentPart]


def _item_type(value: Any) -> str | None:
    if isinstance(value, Mapping):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_type,
        custom_error_type="unsupported_item",
        custom_error_message=(
            "each input item must be a message, a function_call or a function_call_output"
        ),
    ),
]


class FunctionTool(BaseModel):
    """A function tool in the Responses shape."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat(self) -> dict[str, Any]:
        """The tool as chat completions (and so every upstream kind) take it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        if self.parameters is not None:
            function["parameters"] = self.parameters
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}

    def echo(self) -> dict[str, Any]:
        """The tool as a Response object shows it."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": self.strict,
        }


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class TextConfig(BaseModel):
    """``text``: plain text is what every job streams (no JSON schema output)."""

    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_obfuscation: bool | None = None  # tokenrelay never obfuscates: nothing to leave out


class ResponsesRequest(DropInRequest):
    """``POST /v1/responses``. Unlike the other drop-in requests, a field tokenrelay does not
    take is an error (422): a Responses request's options change what comes back."""

    model_config = ConfigDict(extra="forbid")

    job_params: ClassVar[Mapping[str, str]] = {
        "options.temperature": "temperature",
        "options.top_p": "top_p",
        "options.max_tokens": "max_output_tokens",
        "messages": "input",
        "prompt": "input",
    }

    input: Annotated[list[InputItem], Field(max_length=10_000)] | str
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto", "none"] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: bool | None = None
    stream: bool | None = False
    background: bool | None = False
    previous_response_id: str | None = Field(default=None, max_length=128)
    # Accepted, with no effect on what is generated:
    stream_options: StreamOptions | None = None
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = Field(default=None, max_length=0)
    user: str | None = Field(default=None, max_length=512)
    safety_identifier: str | None = Field(default=None, max_length=512)

    # Set by the route before ``job_input``: the conversation so far (``previous_response_id``)
    # and whether the upstream takes a prompt, not messages.
    _history: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _prompt_only: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in cls.model_fields)
            if unknown:
                raise ValueError(
                    f"tokenrelay's Responses API does not support {unknown} "
                    "(see the README for the fields it takes)"
                )
        return data

    @field_validator("parallel_tool_calls")
    @classmethod
    def _parallel(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError("only parallel_tool_calls=true is supported (the model decides)")
        return value

    @model_validator(mode="after")
    def _background_is_stored(self) -> ResponsesRequest:
        if self.background and self.store is False:
            raise ValueError("background responses are stored: drop store=false")
        return self

    def continue_from(self, history: list[dict[str, Any]]) -> None:
        """Put ``history`` (chat messages) before this request's input."""
        self._history = history

    def prompt_only(self) -> bool:
        """The upstream takes a prompt: a plain string input goes as the prompt. False when
        this request cannot be one (items, instructions, tools, a conversation)."""
        self._prompt_only = True
        return isinstance(self.input, str) and not (
            self.instructions or self._history or self.tools
        )

    @property
    def instruction_messages(self) -> list[dict[str, Any]]:
        return (
            [] if self.instructions is None else [{"role": "system", "content": self.instructions}]
        )

    def job_input(self) -> dict[str, Any]:
        if self._prompt_only and isinstance(self.input, str):
            return {"prompt": self.input}
        messages = [*self.instruction_messages, *self._history, *input_messages(self.input)]
        tools = [] if self.tool_choice == "none" else [tool.chat() for tool in self.tools or []]
        return {"messages": messages, "tools": tools}

    def job_fields(self) -> dict[str, Any]:
        options = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_output_tokens,
        }
        return {
            "options": {k: v for k, v in options.items() if v is not None},
            "metadata": self.metadata or {},
        }

    def compat(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "api": "responses",
            "instructions": self.instructions,
            "input_from": len(self.instruction_messages) + len(self._history),
            "tools": [tool.echo() for tool in self.tools or []],
            "tool_choice": self.tool_choice or "auto",
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_output_tokens": self.max_output_tokens,
            "background": bool(self.background),
            "store": self.store is not False,
            "previous_response_id": self.previous_response_id,
        }


def input_messages(
    value: str | Sequence[MessageItem | FunctionCallItem | FunctionCallOutputItem],
) -> list[dict[str, Any]]:
    """A request's input as chat messages: consecutive ``function_call`` items join the
    assistant message before them (or a new one)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for item in value:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            out.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)}
            )
    return out


def conversation(view: ResponsesView, record: JobRecord, text: str) -> list[dict[str, Any]]:
    """What a response sent and answered, as chat messages, for a response that continues it
    (``previous_response_id``): its instructions left out, as OpenAI does."""
    request = record.request
    messages = request.get("messages")
    if messages is None:
        sent = [{"role": "user", "content": request.get("prompt", "")}]
    else:
        sent = list(messages[1:] if view.echo.get("instructions") is not None else messages)
    answer: dict[str, Any] = {"role": "assistant", "content": text}
    calls = [
        {
            "id": view.call_id(call.id, i),
            "type": "function",
            "function": {"name": call.name or "", "arguments": call.arguments},
        }
        for i, call in enumerate(record.tool_calls)
    ]
    if calls:
        answer["tool_calls"] = calls
    if text or calls:
        sent.append(answer)
    return sent


def input_items(view: ResponsesView, record: JobRecord) -> list[dict[str, Any]]:
    """The request's input as Responses items (``GET .../input_items``), oldest first: what the
    job sent after its instructions and the conversation it continued."""
    request = record.request
    messages = request.get("messages")
    if messages is None:
        messages = [{"role": "user", "content": request.get("prompt", "")}]
    first = int(view.echo.get("input_from") or 0)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages[first:], start=first):
        role, content = message.get("role"), message.get("content")
        text = content if isinstance(content, str) else _parts_text(content)
        if role == "tool":
            out.append(
                {
                    "id": f"fco_{view.suffix}_in{i}",
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id") or "",
                    "output": text,
                    "status": "completed",
                }
            )
            continue
        if role == "assistant":
            if text:
                item = message_item(view, 0, text, "completed")
                out.append({**item, "id": f"msg_{view.suffix}_in{i}"})
            for k, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                out.append(
                    {
                        "id": f"fc_{view.suffix}_in{i}_{k}",
                        "type": "function_call",
                        "call_id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "arguments": function.get("arguments") or "",
                        "status": "completed",
                    }
                )
            continue
        out.append(
            {
                "id": f"msg_{view.suffix}_in{i}",
                "type": "message",
                "role": role,
                "status": "completed",
                "content": [{"type": "input_text", "text": text}],
            }
        )
    return out


def _parts_text(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
