"""Owns the sidecar's log output: one JSON object per line on stderr.

The same shape as ``secure_keys.core.logs`` in JSON mode (``timestamp``, ``level``,
``event``, then the fields), written with the standard library instead of structlog:
importing structlog costs this process about 3 MiB (it pulls in ``asyncio``, and ``rich``
where that is installed), a sixth of the sidecar's 20 MiB budget. Callers pass key names,
versions, fingerprints and reasons, never key material, tokens or sealed values.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["Logger"]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Logger:
    """A tiny structured logger: ``log.info("event", key=value, ...)``."""

    def __init__(self, stream: TextIO | None = None, *, level: str = "info") -> None:
        self._stream = stream
        self._threshold = _LEVELS[level]

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < self._threshold:
            return
        record = {
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "level": level,
            "event": event,
            "logger": "secure_keys_sidecar",
            **fields,
        }
        stream = self._stream or sys.stderr
        stream.write(json.dumps(record, default=str) + "\n")
        stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)
