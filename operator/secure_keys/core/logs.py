"""Owns logging configuration: structlog, configured once per process.

JSON lines when stderr is not a terminal (containers, CI), readable key=value output
when it is. Standard-library loggers (kopf, aiohttp) go through the same renderer, so a
process emits one format. Context such as the ApiKey being reconciled is bound with
contextvars. Log calls pass names, versions and fingerprints, never key material.

structlog's own events skip the standard library: structlog renders them with the same
processors and writes them straight to stderr, so the lines are the same as through a
``logging`` handler, at half the cost (the gateway writes one per admission).
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Never rich tracebacks with local variables: a frame's locals can hold a bearer
    # token or a request body. Plain tracebacks carry only code and exception messages.
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    exceptions: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info] if json else []
    )
    structlog.configure(
        processors=[*shared, *exceptions, renderer],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exceptions,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
