"""Owns logging configuration: structlog, configured once per process.

JSON lines when stderr is not a terminal (containers, CI), readable key=value output
when it is. Standard-library loggers (kopf, aiohttp) go through the same renderer, so a
process emits one format. Context such as the ApiKey being reconciled is bound with
contextvars. Log calls pass names, versions and fingerprints, never key material.

structlog's own events skip the standard library: structlog renders them with the same
processors and writes them straight to stderr, so the lines are the same as through a
``logging`` handler, at half the cost (the gateway writes one per admission). A
process may pass a faster serializer (``dumps``): the gateway renders every JSON line
with orjson (structlog's as bytes), in 60 % of the time: the same fields and values,
compact, non-ASCII text as UTF-8 rather than escaped. ``core`` itself imports only base
dependencies, and orjson is in the server extra.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import structlog

_configured = False


def configure(
    *,
    json: bool | None = None,
    level: int = logging.INFO,
    dumps: Callable[..., bytes] | None = None,
) -> None:
    """Configure logging for this process, once.

    ``dumps``: a faster ``json.dumps`` giving bytes (the gateway passes orjson's, see the
    module), used for every JSON line; None keeps the standard library's.
    """
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
    fast = dumps if json else None
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if not json
        else structlog.processors.JSONRenderer()
        if fast is None
        # The standard library's handler wants text: the same bytes, decoded.
        else structlog.processors.JSONRenderer(serializer=lambda v, **o: fast(v, **o).decode())
    )
    exceptions: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info] if json else []
    )
    own_renderer, factory = renderer, structlog.WriteLoggerFactory(sys.stderr)
    binary = getattr(sys.stderr, "buffer", None)
    if fast is not None and binary is not None:
        own_renderer = structlog.processors.JSONRenderer(serializer=fast)
        factory = structlog.BytesLoggerFactory(binary)  # type: ignore[assignment]
    structlog.configure(
        processors=[*shared, *exceptions, own_renderer],
        logger_factory=factory,
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
