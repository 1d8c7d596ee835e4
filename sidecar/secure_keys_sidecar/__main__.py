"""The ``secure-keys-sidecar`` command: parse the settings, wire the edges, run the loop.

Exit codes: 0 after SIGTERM or SIGINT, or in ``--once`` mode once every key is on disk;
2 when the configuration is unusable (the message says which setting).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Sequence

from secure_keys_sidecar.agent import Agent
from secure_keys_sidecar.files import KeyDirectory
from secure_keys_sidecar.log import Logger
from secure_keys_sidecar.settings import SettingsError, parse_settings
from secure_keys_sidecar.stream import Stream, open_stream, post_reload, tls_context

PR_SET_DUMPABLE = 4
"""prctl(2): whether the process may be ptraced, dumped, or have its /proc/<pid> files
(``root``, ``environ``, ``mem``, ``fd``) opened by another process of the same uid."""


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: another container at the sidecar's uid that sees its
    processes (``shareProcessNamespace``) cannot open ``/proc/<pid>/root`` (the token,
    the keys), ``environ`` or ``mem`` without CAP_SYS_PTRACE. True if it took effect.

    Called before anything is read; ctypes, because the standard library has no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0


def main(argv: Sequence[str] | None = None) -> int:
    log = Logger(level=os.environ.get("SECUREKEYS_LOG_LEVEL", "info"))
    if not make_undumpable():
        log.warning("dumpable", error="prctl(PR_SET_DUMPABLE, 0) failed")
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as exc:
        log.error("bad-configuration", error=str(exc))
        return 2
    context = tls_context(settings.ca_file)
    if settings.ca_file is not None and not settings.ca_file.is_file():
        log.warning("no-ca-file", path=str(settings.ca_file), using="system trust store")

    def connect(token: str, body: bytes) -> Stream:
        return open_stream(settings.gateway_url, token, body, context)

    reload_url = settings.reload_url
    notify = None
    if reload_url is not None:

        def notify(body: bytes) -> None:
            post_reload(reload_url, body)

    agent = Agent(settings, KeyDirectory(settings.directory), connect, log=log, notify=notify)
    agent.install_signal_handlers()
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
