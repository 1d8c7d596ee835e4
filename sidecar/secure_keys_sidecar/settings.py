"""Owns the sidecar's configuration: flags and environment parsed once into ``Settings``.

The environment is the contract with the webhook (``secure_keys/gateway/webhook/
patch.py``), spelled once in ``secure_keys.core.sidecarenv``: the webhook sets
``SECUREKEYS_KEYS``, ``SECUREKEYS_FILES``, ``SECUREKEYS_DIR``, ``SECUREKEYS_TOKEN_FILE``,
``SECUREKEYS_MODE``, ``POD_NAMESPACE``, ``POD_NAME``, ``POD_UID`` and, with
``--broker-url``, ``SECUREKEYS_GATEWAY_URL``; and the argument ``--once`` for init
containers. Two more are read if present: ``SECUREKEYS_CA_FILE`` (the gateway's serving
CA; else the system's trust store) and ``SECUREKEYS_RELOAD_URL`` (a localhost URL POSTed
after each rotation). A flag overrides its variable. Pure:
``parse_settings`` takes argv and the environment as arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from secure_keys.core import sidecarenv

__all__ = ["DEFAULT_CA_FILE", "DEFAULT_DIR", "DEFAULT_TOKEN_FILE", "Settings", "parse_settings"]

DEFAULT_DIR = sidecarenv.KEYS_DIR
DEFAULT_TOKEN_FILE = sidecarenv.TOKEN_PATH
DEFAULT_CA_FILE = sidecarenv.CA_PATH
_MODES = ("native", "classic", "init-only")
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class SettingsError(ValueError):
    """Configuration the sidecar cannot run with; the message says which setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    gateway_url: str
    keys: tuple[str, ...]
    files: tuple[str, ...]
    directory: Path
    token_file: Path
    mode: str
    namespace: str
    pod_name: str
    pod_uid: str
    ca_file: Path | None
    reload_url: str | None
    once: bool

    @property
    def gateway_host(self) -> str:
        return urlsplit(self.gateway_url).hostname or ""

    @property
    def gateway_port(self) -> int:
        return urlsplit(self.gateway_url).port or 443


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Parse flags over environment; raise ``SettingsError`` naming what is wrong."""
    parser = argparse.ArgumentParser(
        prog="secure-keys-sidecar",
        description="Deliver this pod's keys from the secure-keys gateway into its tmpfs.",
    )
    parser.add_argument("--once", action="store_true", help="fetch every key once, then exit 0")
    parser.add_argument("--gateway-url", default=env.get(sidecarenv.GATEWAY_URL, ""))
    parser.add_argument("--keys", default=env.get(sidecarenv.KEYS, ""))
    parser.add_argument("--files", default=env.get(sidecarenv.FILES, ""))
    parser.add_argument("--dir", default=env.get(sidecarenv.DIR, DEFAULT_DIR))
    parser.add_argument("--token-file", default=env.get(sidecarenv.TOKEN_FILE, DEFAULT_TOKEN_FILE))
    parser.add_argument("--mode", default=env.get(sidecarenv.MODE, "native"))
    parser.add_argument("--ca-file", default=env.get(sidecarenv.CA_FILE, DEFAULT_CA_FILE))
    parser.add_argument("--reload-url", default=env.get(sidecarenv.RELOAD_URL, ""))
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        raise SettingsError("invalid command line (see --help)") from exc

    url = urlsplit(args.gateway_url)
    if url.scheme != "https" or not url.hostname:
        raise SettingsError(
            f"{sidecarenv.GATEWAY_URL} (--gateway-url) must be an https:// URL of the gateway; "
            "the webhook sets it from the gateway's --broker-url"
        )
    keys = _split(args.keys)
    if not keys:
        raise SettingsError(f"{sidecarenv.KEYS} (--keys) names no key")
    files = _split(args.files) or keys
    if len(files) != len(keys):
        raise SettingsError(f"{sidecarenv.FILES} must name one file per key in {sidecarenv.KEYS}")
    if args.mode not in _MODES:
        raise SettingsError(f"{sidecarenv.MODE} must be one of {', '.join(_MODES)}")
    namespace = env.get(sidecarenv.POD_NAMESPACE, "")
    if not namespace:
        raise SettingsError(f"{sidecarenv.POD_NAMESPACE} is not set (the downward API sets it)")
    reload_url = args.reload_url or None
    if reload_url is not None:
        target = urlsplit(reload_url)
        if target.scheme != "http" or target.hostname not in _LOCAL_HOSTS:
            raise SettingsError(
                f"{sidecarenv.RELOAD_URL} must be an http:// URL on localhost, 127.0.0.1 or [::1]"
            )
    ca_file = Path(args.ca_file) if args.ca_file else None
    return Settings(
        gateway_url=args.gateway_url,
        keys=keys,
        files=files,
        directory=Path(args.dir),
        token_file=Path(args.token_file),
        mode=args.mode,
        namespace=namespace,
        pod_name=env.get(sidecarenv.POD_NAME, ""),
        pod_uid=env.get(sidecarenv.POD_UID, ""),
        ca_file=ca_file,
        reload_url=reload_url,
        once=args.once or args.mode == "init-only",
    )
