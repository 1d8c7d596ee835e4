"""``logs.configure``: the JSON lines every process writes, in a fresh interpreter.

structlog's events are written straight to stderr, the standard library's go through a
handler; both must be one JSON object per line with the same fields as ever, in one
layout (``json.dumps``'s, or the compact one of the gateway's orjson serializer), debug
filtered out, and tracebacks without local variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import logging
    import structlog
    from secure_keys.core.logs import configure

    if GATEWAY:
        from secure_keys.gateway.__main__ import log_dumps
        configure(json=True, dumps=log_dumps)
    else:
        configure(json=True)
    log = structlog.get_logger("secure_keys.test")
    log.info("plain", uid="u-1", keys=["a", "b"], duration_ms=0.25, dry_run=False)
    print("PLAIN", flush=True)
    log.debug("hidden")
    log.warning("odd", big=2**70, text="caf\\u00e9", table={1: "int key"}, obj=object)
    def fail(local_value="do-not-log-locals"):
        raise RuntimeError("boom")
    try:
        fail()
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("aiohttp.access").warning("from %s", "stdlib")
    """
)


@pytest.mark.parametrize("gateway", [False, True], ids=["json.dumps", "gateway-orjson"])
def test_every_line_is_one_json_object_with_the_usual_fields(gateway: bool) -> None:
    script = f"GATEWAY = {gateway}\n" + SCRIPT
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "PLAIN\n"  # stdout carries no log line
    assert "do-not-log-locals" not in done.stderr
    lines = done.stderr.splitlines()
    if gateway:  # orjson's compact layout, through logging too
        assert lines[0].startswith('{"uid":"u-1","keys":["a","b"],')
        assert lines[-1].startswith('{"event":"from stdlib",')
    else:  # json.dumps's
        assert lines[0].startswith('{"uid": "u-1", "keys": ["a", "b"], ')
        assert lines[-1].startswith('{"event": "from stdlib", ')
    plain, odd, failed, foreign = [json.loads(line) for line in lines]
    assert plain["event"] == "plain"
    assert plain["level"] == "info"
    assert plain["timestamp"].endswith("Z")
    assert (plain["uid"], plain["keys"], plain["duration_ms"]) == ("u-1", ["a", "b"], 0.25)
    assert plain["dry_run"] is False
    assert (odd["level"], odd["big"], odd["text"]) == ("warning", 2**70, "caf\u00e9")
    assert odd["table"] == {"1": "int key"}
    assert odd["obj"] == repr(object)
    assert failed["level"] == "error"
    assert "RuntimeError: boom" in failed["exception"]
    assert foreign["event"] == "from stdlib"
    assert foreign["logger"] == "aiohttp.access"
    assert foreign["level"] == "warning"
