"""The ``tokenrelay`` command: ``api``, ``worker`` (and ``dev``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from tokenrelay.logging import configure_logging
from tokenrelay.settings import Settings


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
    create_app = importlib.import_module("api.app").create_app
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,  # structlog owns logging
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def _run_worker(args: argparse.Namespace) -> None:
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        import uvloop

        asyncio.set_event_loop(uvloop.new_event_loop())
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        asyncio.set_event_loop(asyncio.new_event_loop())
    worker = importlib.import_module("worker.main").create_worker(settings)
    worker.run()


def _run_dev(args: argparse.Namespace) -> None:
    from tokenrelay.dev import run

    raise SystemExit(run(args.host, args.port))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(run=_run_api)
    worker = commands.add_parser("worker", help="run a worker that streams generation jobs")
    worker.set_defaults(run=_run_worker)
    dev = commands.add_parser("dev", help="run Redis, the API and a worker on this machine")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_run_dev)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
