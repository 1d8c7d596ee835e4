"""TCP forwarders from the node's network namespace to the host's loopback.

`python -m secure_keys_dev.forward --netns /proc/<pid>/ns/net ADDRESS:PORT=HOSTPORT ...`
opens each listening socket inside the node's network namespace (a socket keeps
the namespace it was made in), returns to its own namespace, and joins every
accepted connection to ``127.0.0.1:HOSTPORT`` on the host. This is how the
kubelet, kube-proxy's `kubernetes` Service endpoint, CoreDNS and pods reach the
API server and the tests' servers on the host's loopback without anything ever
connecting to the host end of the veth pair.

Written here rather than taken from a library: socat (1.7 in Debian bookworm)
cannot hold sockets in two namespaces, and the whole job is one setns(2) call
around `bind` plus a byte pump. It runs as a child of the cluster with
PR_SET_PDEATHSIG, like every other component.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_CLONE_NEWNET = 0x40000000
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Rule:
    address: str
    port: int
    host_port: int

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``ADDRESS:PORT=HOSTPORT``."""
        listen, sep, host_port = text.partition("=")
        address, colon, port = listen.rpartition(":")
        if not (sep and colon and address and port.isdigit() and host_port.isdigit()):
            raise ValueError(f"not ADDRESS:PORT=HOSTPORT: {text[:60]!r}")
        return cls(address, int(port), int(host_port))

    def __str__(self) -> str:
        return f"{self.address}:{self.port}={self.host_port}"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def listen_in(netns: str, rules: Sequence[Rule]) -> list[socket.socket]:
    """Listening sockets for ``rules``, made inside the namespace at path ``netns``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    sockets: list[socket.socket] = []
    try:
        _setns(target)
        try:
            for rule in rules:
                sockets.append(socket.create_server((rule.address, rule.port), backlog=128))
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sockets


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset: the client then sees "connection reset by peer", the
    nearest a forwarder that already accepted can come to the refusal its server gave."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _join(host_port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        host_reader, host_writer = await asyncio.open_connection("127.0.0.1", host_port)
    except OSError:
        _reset(writer)
        return
    try:
        await asyncio.gather(_pump(reader, host_writer), _pump(host_reader, writer))
    finally:
        for side in (writer, host_writer):
            side.close()
            with contextlib.suppress(OSError):
                await side.wait_closed()


async def serve(netns: str, rules: Sequence[Rule]) -> None:
    servers = []
    for rule, sock in zip(rules, listen_in(netns, rules), strict=True):

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int = rule.host_port
        ) -> None:
            await _join(port, reader, writer)

        servers.append(await asyncio.start_server(handle, sock=sock))
    print("forwarding " + " ".join(str(r) for r in rules), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secure_keys_dev.forward", description=__doc__)
    parser.add_argument("--netns", required=True, help="/proc/<pid>/ns/net of the node")
    parser.add_argument("rules", nargs="+", type=Rule.parse, metavar="ADDRESS:PORT=HOSTPORT")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.netns, args.rules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
