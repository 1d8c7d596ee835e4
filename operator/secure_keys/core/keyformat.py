"""Owns how one key's plaintext is rendered in its delivery format (raw, env, json).

The sidecar writes these bytes into a key file; ``secure-keys get --format`` prints the
same bytes, so a key read from the command line looks as it does in a pod. Pure; every
result is a fresh ``bytearray`` the caller zeroes, and refusals name the rule, never the
value (``KeyFormatError``).
"""

from __future__ import annotations

import json
import re
from typing import Literal

Format = Literal["raw", "env", "json"]
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}\Z")
# Bytes an env value may hold unquoted; anything else is single-quoted.
_ENV_PLAIN = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./+=:@,%^~"
)


class KeyFormatError(ValueError):
    """A key that cannot be rendered in the asked format (the message names the rule)."""


def _utf8_ok(data: bytearray | bytes) -> bool:
    """Whether ``data`` is well-formed UTF-8, checked without building a ``str`` copy."""
    i, size = 0, len(data)
    while i < size:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if 0xC2 <= lead <= 0xDF:
            need, low, high = 1, 0x80, 0xBF
        elif 0xE0 <= lead <= 0xEF:
            need = 2
            low = 0xA0 if lead == 0xE0 else 0x80
            high = 0x9F if lead == 0xED else 0xBF
        elif 0xF0 <= lead <= 0xF4:
            need = 3
            low = 0x90 if lead == 0xF0 else 0x80
            high = 0x8F if lead == 0xF4 else 0xBF
        else:
            return False
        if i + need >= size:
            return False
        if not low <= data[i + 1] <= high:
            return False
        for j in range(i + 2, i + need + 1):
            if not 0x80 <= data[j] <= 0xBF:
                return False
        i += need + 1
    return True


def render(
    fmt: Format, plaintext: bytearray, *, apikey: str, env_name: str | None, version: int
) -> bytearray:
    """The file contents for one version, in a fresh ``bytearray`` the caller zeroes.

    ``raw``: the key itself. ``env``: one ``NAME=value`` line, the value single-quoted
    (``'`` written as ``'\\''``) unless it is made of shell-safe characters; a key holding
    a newline or NUL cannot be an env line and is refused. ``json``: ``{"apiKey", "version",
    "value"}`` with the key as a JSON string; it must be UTF-8. Refusals raise
    ``KeyFormatError`` naming the rule, never the value.
    """
    out = bytearray()
    if fmt == "raw":
        out += plaintext
        return out
    if fmt == "env":
        name = env_name or apikey.upper().replace("-", "_").replace(".", "_")
        if not ENV_NAME.match(name):
            raise KeyFormatError("the env format needs a valid variable name")
        if b"\n" in plaintext or b"\r" in plaintext or b"\x00" in plaintext:
            raise KeyFormatError("a key with a newline or NUL cannot be written as an env line")
        out += name.encode() + b"="
        if plaintext and all(byte in _ENV_PLAIN for byte in plaintext):
            out += plaintext
        else:
            out += b"'"
            for byte in plaintext:
                if byte == 0x27:
                    out += b"'\\''"
                else:
                    out.append(byte)
            out += b"'"
        out += b"\n"
        return out
    if fmt == "json":
        if not _utf8_ok(plaintext):
            raise KeyFormatError("the json format needs a UTF-8 key")
        out += b'{"apiKey":' + json.dumps(apikey).encode()
        out += b',"version":' + str(version).encode() + b',"value":"'
        for byte in plaintext:
            if byte == 0x22:
                out += b'\\"'
            elif byte == 0x5C:
                out += b"\\\\"
            elif byte < 0x20 or byte == 0x7F:
                out += b"\\u%04x" % byte
            else:
                out.append(byte)
        out += b'"}\n'
        return out
    raise KeyFormatError("format must be raw, env or json")
