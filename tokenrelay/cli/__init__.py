"""The ``tokenrelay`` command: ``api``, ``worker``, ``dev``, and ``submit``, ``tail``, ``jobs``."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from tokenrelay.cli import supervise
from tokenrelay.logging import configure_logging
from tokenrelay.settings import Settings

if TYPE_CHECKING:  # the SDK is imported only by the commands that use it
    from tokenrelay.client import Client, Usage, UsageEvent

API_STOP_GRACE_S = 15.0
"""How long the API's children may take to stop (uvicorn's own graceful shutdown is 5 s)."""
WORKER_STOP_MARGIN_S = 10.0
"""A worker child's stop may take its ``shutdown_grace_s`` and this much more."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Name the bad variable, never echo its value (it may hold a key).
        problems = "; ".join(
            f"TOKENRELAY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        print(f"tokenrelay: bad configuration: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _run_api(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    workers = args.workers or supervise.default_count()
    if workers > 1 and args.fd is None:
        sock = supervise.listen(args.host, args.port)
        command = supervise.cli_command("api", "--workers", "1", "--fd", str(sock.fileno()))
        supervisor = supervise.Supervisor(
            "api", command, workers, stop_grace_s=API_STOP_GRACE_S, pass_fds=[sock.fileno()]
        )
        raise SystemExit(supervisor.run())
    from api.app import create_app
    from api.server import http_protocol

    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        # httptools with a cap on the request head (httptools itself has none).
        http=http_protocol(settings.max_header_bytes),
        log_config=None,  # structlog owns logging
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # A child of `api --workers N`: serve the supervisor's socket (its family read from it, so
    # accepted TCP connections get TCP_NODELAY as usual).
    sockets = None if args.fd is None else [socket.socket(fileno=args.fd)]
    server.run(sockets=sockets)
    if not server.started:
        raise SystemExit(3)


def _run_worker(args: argparse.Namespace) -> None:
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    processes = args.processes or supervise.default_count()
    if processes > 1:
        command = supervise.cli_command("worker", "--processes", "1")
        grace = settings.shutdown_grace_s + WORKER_STOP_MARGIN_S
        supervisor = supervise.Supervisor("worker", command, processes, stop_grace_s=grace)
        raise SystemExit(supervisor.run())
    try:
        import uvloop

        asyncio.set_event_loop(uvloop.new_event_loop())
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        asyncio.set_event_loop(asyncio.new_event_loop())
    from worker.main import create_worker

    worker = create_worker(settings)
    worker.run()


def _run_dev(args: argparse.Namespace) -> None:
    from tokenrelay.cli.dev import run

    raise SystemExit(run(args.host, args.port))


# --- client commands: submit, tail, jobs (over the SDK) -----------------------------------------

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
SUCCESS_REASONS = frozenset({"stop", "length", "tool_calls"})


class _Spinner:
    """A spinner on stderr until the first token; a no-op unless stderr is a terminal."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if stream.isatty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            self._stream.write(f"\r{self.FRAMES[i % len(self.FRAMES)]} waiting for the first token")
            self._stream.flush()
            i += 1

    def stop(self) -> None:
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._stream.write("\r\x1b[K")  # erase the spinner's line
            self._stream.flush()


def _write(text: str) -> None:
    """Text to stdout at once, as UTF-8 whatever the locale says."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        sys.stdout.flush()
        buffer.write(text.encode())
        buffer.flush()
    else:  # pragma: no cover - a stdout replaced by a text-only stream
        sys.stdout.write(text)
        sys.stdout.flush()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _client(args: argparse.Namespace) -> Client:
    from tokenrelay.client import Client

    return Client(args.url, api_key=args.api_key or None)


def _summary(finish_reason: str, usage: Usage | UsageEvent | None) -> str:
    parts = [finish_reason]
    if usage is not None:
        tokens = f"{usage.total_tokens} tokens ({usage.prompt_tokens} prompt"
        tokens += f" + {usage.completion_tokens} completion"
        parts.append(tokens + (", estimated)" if usage.source == "estimated" else ")"))
        if usage.ttft_ms is not None:
            parts.append(f"ttft {usage.ttft_ms:.0f} ms")
        if usage.duration_ms is not None:
            parts.append(f"{usage.duration_ms / 1000:.2f} s")
    return ", ".join(parts)


def _follow(client: Client, job_id: str, after: str | None) -> int:
    """Print the job's text as it streams; errors, tool calls and a summary go to stderr."""
    from tokenrelay.client import (
        DeltaEvent,
        EndEvent,
        ErrorEvent,
        StartEvent,
        ToolCallEvent,
        UsageEvent,
    )
    from tokenrelay.wire import ToolCall, merge_tool_call

    spinner = _Spinner(sys.stderr)
    last_id, end, usage, ends_in_newline = after, None, None, True
    calls: dict[int, ToolCall] = {}
    events = client.stream(job_id, after)
    try:
        for event in events:
            last_id = event.id
            if not isinstance(event, StartEvent | UsageEvent):  # a first token, or the end
                spinner.stop()
            if isinstance(event, DeltaEvent) and event.text:
                _write(event.text)
                ends_in_newline = event.text.endswith("\n")
            elif isinstance(event, ToolCallEvent):
                merge_tool_call(calls, event)
            elif isinstance(event, UsageEvent):
                usage = event
            elif isinstance(event, ErrorEvent):
                _say(f"error: {event.error_type}: {event.message}")
            elif isinstance(event, EndEvent):
                end = event
    except KeyboardInterrupt:
        spinner.stop()
        events.close()
        resume = f" --after {last_id}" if last_id else ""
        _say(f"\ninterrupted; the job goes on: tokenrelay tail {job_id}{resume}")
        return EXIT_INTERRUPTED
    finally:
        spinner.stop()
    if sys.stdout.isatty() and not ends_in_newline:
        _write("\n")
    for call in calls.values():
        _say(f"tool call: {call.name or ''}({call.arguments})")
    finish_reason: str | None = None if end is None else end.finish_reason
    summary: Usage | UsageEvent | None = usage
    if summary is None or finish_reason is None:
        # Resumed after the usage event (or after the end: no events at all): ask the job.
        job = client.get(job_id)
        summary = summary or job.usage
        finish_reason = finish_reason or job.finish_reason or job.status
    _say(_summary(finish_reason, summary))
    return EXIT_OK if finish_reason in SUCCESS_REASONS else EXIT_FAILED


def _client_command(
    run: Callable[[Client, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Run a client command: SDK errors are one line on stderr and exit status 1."""

    def command(args: argparse.Namespace) -> int:
        # Imported here, not at parse time: `tokenrelay api` and `worker` never load the SDK.
        from tokenrelay.client import ClientError, UnprocessableEntityError

        try:
            with _client(args) as client:
                return run(client, args)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except UnprocessableEntityError as exc:
            _say(f"tokenrelay: invalid request: {exc}")
        except ClientError as exc:
            _say(f"tokenrelay: {exc}")
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, without a second error at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED

    return command


def _submit(client: Client, args: argparse.Namespace) -> int:
    from tokenrelay.client import UnprocessableEntityError

    options = {"max_tokens": args.max_tokens} if args.max_tokens is not None else None
    common: dict[str, Any] = {"upstream": args.upstream, "model": args.model, "options": options}
    try:
        job = client.submit(messages=[{"role": "user", "content": args.prompt}], **common)
    except UnprocessableEntityError as exc:
        if exc.param != "messages":
            raise
        # An upstream of the `sse` kind takes a bare prompt, not chat messages.
        job = client.submit(args.prompt, **common)
    if not args.follow:
        print(job.id, flush=True)
        return EXIT_OK
    _say(f"job {job.id}")
    return _follow(client, job.id, None)


def _tail(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.job, args.after)


def _jobs(client: Client, args: argparse.Namespace) -> int:
    page = client.jobs(args.limit, before=args.before)
    rows = [
        (
            j.id,
            j.status,
            j.upstream,
            j.model or "-",
            j.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            j.finish_reason or "-",
        )
        for j in page
    ]
    header = ("ID", "STATUS", "UPSTREAM", "MODEL", "CREATED", "FINISH")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if page.has_more:
        _say(f"more: tokenrelay jobs --before {page.next_before}")
    return EXIT_OK


def _client_parser(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
    parser.add_argument(
        "--url",
        default=os.environ.get("TOKENRELAY_URL") or "http://127.0.0.1:8000",
        help="the API (default: $TOKENRELAY_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TOKENRELAY_API_KEY"),
        help="bearer key (default: $TOKENRELAY_API_KEY)",
    )
    return parser


def _count(value: str) -> int:
    """A process count: a whole number from 1 up."""
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"not a process count (1 or more): {value!r}")
    return count


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers", type=_count, default=0, metavar="N", help="processes (default: one per core)"
    )
    api.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a child of --workers N
    api.set_defaults(run=_run_api)
    worker = commands.add_parser("worker", help="run a worker that streams generation jobs")
    worker.add_argument(
        "--processes", type=_count, default=0, metavar="N", help="processes (default: one per core)"
    )
    worker.set_defaults(run=_run_worker)
    dev = commands.add_parser("dev", help="run Redis, the API and a worker on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_run_dev)

    submit = _client_parser(commands, "submit", "submit a job; print its id, or its text")
    submit.add_argument("prompt", help="the prompt: one user message")
    submit.add_argument("--upstream", help="a configured upstream (default: the API's default)")
    submit.add_argument("--model", help="the model (default: the upstream's default)")
    submit.add_argument("--max-tokens", type=int, metavar="N", help="options.max_tokens")
    submit.add_argument("--follow", action="store_true", help="stream the text, as tail does")
    submit.set_defaults(run=_client_command(_submit))
    tail = _client_parser(commands, "tail", "print a job's text as it streams (resumes on drops)")
    tail.add_argument("job", help="the job id")
    tail.add_argument("--after", metavar="ID", help="start after this event id (or `now`)")
    tail.set_defaults(run=_client_command(_tail))
    jobs = _client_parser(commands, "jobs", "list your recent jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20, metavar="N", help="1 to 100 (default 20)")
    jobs.add_argument("--before", metavar="CURSOR", help="the page before this cursor")
    jobs.set_defaults(run=_client_command(_jobs))

    args = parser.parse_args(argv)
    status = args.run(args)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
