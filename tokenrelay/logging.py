"""structlog configuration: JSON lines in production, a console renderer in a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "INFO"
) -> None:
    """Configure structlog (and route stdlib logging through the same renderer).

    ``auto`` picks the console renderer when stderr is a terminal, JSON otherwise.
    Never log prompt or output text, nor keys: log ids, counts and latencies.
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    tail: list[structlog.typing.Processor] = (
        [renderer] if use_console else [structlog.processors.format_exc_info, renderer]
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (uvicorn, arq, httpx) log through stdlib logging: same format, same stream.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # httpx logs every request URL at INFO; keep it to warnings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
