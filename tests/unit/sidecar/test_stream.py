"""The sidecar as a process (``python -m secure_keys_sidecar``, configured by the same
environment the webhook injects) against a test double of the broker
(``broker_double.BrokerDouble``: a real aiohttp server over real TLS speaking the
``/v1/stream`` protocol). The real broker's own tests live with the gateway.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from secure_keys.core.delivery import ErrorMessage, ReconnectMessage, Refusal
from secure_keys_dev import pki
from tests.unit.sidecar.broker_double import NAMESPACE, BrokerDouble, FakeKey, fingerprint

CANARY = b"sk_live_CANARY_7f3a9c"


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class Sidecar:
    def __init__(
        self,
        tmp: Path,
        broker: BrokerDouble,
        *,
        keys: str,
        args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.dir = tmp / "keys"
        self.token_file = tmp / "token"
        self.token_file.write_text("token-1\n")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "SECUREKEYS_KEYS": keys,
            "SECUREKEYS_FILES": keys,
            "SECUREKEYS_DIR": str(self.dir),
            "SECUREKEYS_TOKEN_FILE": str(self.token_file),
            "SECUREKEYS_MODE": "native",
            "SECUREKEYS_GATEWAY_URL": broker.url,
            "SECUREKEYS_CA_FILE": str(broker.ca_file),
            "POD_NAME": "web-0",
            "POD_NAMESPACE": NAMESPACE,
            "POD_UID": "0000-1111",
            **(extra_env or {}),
        }
        self.stderr_path = tmp / "sidecar.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module
            [sys.executable, "-m", "secure_keys_sidecar", *args],
            env=env,
            stderr=self._stderr,
        )

    def logs(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr_path.read_text().splitlines() if line]

    def events(self) -> list[object]:
        return [record["event"] for record in self.logs()]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self._stderr.close()
        return code


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerDouble]:
    with BrokerDouble(tmp_path) as double:
        double.keys["stripe-live"] = FakeKey("stripe-live", (1, CANARY))
        yield double


@pytest.fixture
def start(tmp_path: Path, broker: BrokerDouble) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def _start(**kwargs: object) -> Sidecar:
        sidecar = Sidecar(tmp_path, broker, **{"keys": "stripe-live", **kwargs})  # type: ignore[arg-type]
        started.append(sidecar)
        return sidecar

    yield _start
    for sidecar in started:
        sidecar.stop()


def test_delivers_rotates_and_revokes_over_tls(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    sidecar = start()
    key = sidecar.dir / "stripe-live"
    wait_for(lambda: read(key) == CANARY, what="first delivery")
    meta = json.loads((sidecar.dir / "stripe-live.meta.json").read_text())
    assert meta["fingerprint"] == fingerprint(CANARY)
    (request,) = broker.requests
    assert request.token == "token-1"
    assert request.request.keys == ("stripe-live",)
    assert dict(request.request.have) == {}

    broker.keys["stripe-live"] = FakeKey("stripe-live", (2, b"sk_live_second"), (1, CANARY))
    broker.push("stripe-live")
    wait_for(lambda: read(key) == b"sk_live_second", timeout=2, what="rotation within 2 s")
    assert read(sidecar.dir / "stripe-live.previous") == CANARY

    broker.keys["stripe-live"] = FakeKey("stripe-live", (2, b"sk_live_second"))
    broker.push("stripe-live")
    wait_for(lambda: not os.path.lexists(sidecar.dir / "stripe-live.previous"), what="grace end")

    broker.revoke("stripe-live")
    wait_for(lambda: not os.path.lexists(key), timeout=2, what="revocation")
    assert not os.path.lexists(sidecar.dir / "stripe-live.meta.json")
    assert sidecar.stop() == 0
    log = sidecar.stderr_path.read_bytes()
    assert b"CANARY" not in log
    assert b"sk_live_second" not in log
    assert "revoked" in sidecar.events()


def test_reconnect_sends_have_reads_the_new_token_and_uses_a_fresh_key(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    sidecar = start()
    key = sidecar.dir / "stripe-live"
    wait_for(lambda: read(key) == CANARY, what="first delivery")
    first_inode = os.stat(key).st_ino
    sidecar.token_file.write_text("token-2\n")  # the kubelet rotated it
    broker.end(ErrorMessage("PodUpdated", "reconnect, please"))
    wait_for(lambda: len(broker.requests) == 2, what="reconnect")
    first, second = broker.requests
    assert second.token == "token-2"
    assert second.request.have["stripe-live"].current == 1
    assert second.request.recipient.public_key != first.request.recipient.public_key
    time.sleep(0.3)
    # The broker sent v1 without material (the sidecar has it): the same file was kept
    # (hard-linked into the new set that carries the renewed lease).
    assert os.stat(key).st_ino == first_inode
    assert read(key) == CANARY
    assert "stream-error" in sidecar.events()


def test_a_reconnect_line_reconnects_at_once_and_keeps_the_files(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    """A broker shutting down (SIGTERM) says ``reconnect``: the sidecar connects again
    within a second, with no backoff, and serves its files all along."""
    sidecar = start()
    key = sidecar.dir / "stripe-live"
    wait_for(lambda: read(key) == CANARY, what="first delivery")
    broker.end(ReconnectMessage("BrokerStopping"))
    ended = time.monotonic()
    wait_for(lambda: len(broker.requests) == 2, what="reconnect")
    assert time.monotonic() - ended < 2.0  # RECONNECT_JITTER (1 s), generous when loaded
    assert read(key) == CANARY
    assert broker.requests[1].request.have["stripe-live"].current == 1
    wait_for(lambda: "reconnect" in sidecar.events(), what="the reconnect log line")
    assert "protocol-error" not in sidecar.events()


def test_files_are_kept_while_the_gateway_is_down_then_removed_when_the_lease_ends(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    broker.lease = timedelta(seconds=5)  # whole seconds on the wire: 4 to 5 s from now
    sidecar = start()
    key = sidecar.dir / "stripe-live"
    wait_for(lambda: read(key) == CANARY, what="first delivery")
    broker.stop_serving()
    time.sleep(1.0)
    assert read(key) == CANARY  # served from the tmpfs while the gateway is unreachable
    wait_for(lambda: not os.path.lexists(key), timeout=6, what="lease expiry")
    # The files go first, the log line right after: wait for it rather than race it.
    wait_for(lambda: "lease-expired" in sidecar.events(), timeout=5, what="lease-expired")
    assert "unreachable" in sidecar.events()


def test_a_silent_stream_is_dropped_after_three_missed_heartbeats(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    broker.heartbeat = 1
    broker.silent = True
    sidecar = start()
    wait_for(lambda: read(sidecar.dir / "stripe-live") == CANARY, what="first delivery")
    began = time.monotonic()
    wait_for(lambda: len(broker.requests) >= 2, timeout=12, what="reconnect after silence")
    # Three missed 1 s heartbeats, then a backoff; generous above for a loaded machine.
    assert 2.0 <= time.monotonic() - began <= 10.0
    assert "disconnected" in sidecar.events()


def test_heartbeats_keep_a_stream_open(broker: BrokerDouble, start: Callable[..., Sidecar]) -> None:
    broker.heartbeat = 1
    sidecar = start()
    wait_for(lambda: read(sidecar.dir / "stripe-live") == CANARY, what="first delivery")
    time.sleep(4.5)
    assert len(broker.requests) == 1
    assert "disconnected" not in sidecar.events()


def test_rate_limited_connects_wait_for_retry_after(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    broker.refuse = (429, Refusal("RateLimited", "slow down"), "2")
    sidecar = start()
    wait_for(lambda: len(broker.requests) >= 2, timeout=6, what="a retry")
    gap = broker.connect_times[1] - broker.connect_times[0]
    assert gap >= 1.9
    refused = [r for r in sidecar.logs() if r["event"] == "refused"]
    assert refused[0]["status"] == 429
    assert refused[0]["reason"] == "RateLimited"
    assert not os.path.lexists(sidecar.dir / "stripe-live")


def test_a_gateway_with_an_untrusted_certificate_gets_no_request(
    tmp_path: Path, start: Callable[..., Sidecar]
) -> None:
    other_ca = pki.CertificateAuthority.generate("someone-else")
    (tmp_path / "impostor").mkdir()
    with BrokerDouble(tmp_path / "impostor", server_ca=other_ca) as impostor:
        impostor.keys["stripe-live"] = FakeKey("stripe-live", (1, CANARY))
        sidecar = Sidecar(tmp_path, impostor, keys="stripe-live")
        try:
            wait_for(lambda: "unreachable" in sidecar.events(), what="a refused handshake")
            assert impostor.requests == []
            assert not os.path.lexists(sidecar.dir / "stripe-live")
            errors = [r["error"] for r in sidecar.logs() if r["event"] == "unreachable"]
            assert "certificate did not verify" in str(errors[0])
        finally:
            sidecar.stop()


def test_material_sealed_for_another_key_is_not_written(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    broker.keys["stripe-live"] = FakeKey("stripe-live", (1, CANARY), sealed_for="other-key")
    sidecar = start()
    wait_for(lambda: "material-invalid" in sidecar.events(), what="a refused blob")
    assert not os.path.lexists(sidecar.dir / "stripe-live")


def test_once_mode_exits_zero_when_every_key_is_on_disk(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    broker.keys["billing"] = FakeKey("billing.env", None, format="env")  # no version yet
    sidecar = start(keys="stripe-live,billing", args=("--once",))
    wait_for(lambda: read(sidecar.dir / "stripe-live") == CANARY, what="first key")
    time.sleep(0.3)
    assert sidecar.proc.poll() is None  # billing has no version yet: still waiting
    broker.keys["billing"] = FakeKey("billing.env", (1, b"b-key"), format="env", env_name="BILLING")
    broker.push("billing")
    assert sidecar.proc.wait(5) == 0
    assert read(sidecar.dir / "billing.env") == b"BILLING=b-key\n"


def test_sigterm_ends_the_process_promptly(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    sidecar = start()
    wait_for(lambda: read(sidecar.dir / "stripe-live") == CANARY, what="first delivery")
    began = time.monotonic()
    assert sidecar.stop() == 0
    assert time.monotonic() - began < 2.0
    assert sidecar.events()[-1] == "stopping"


def test_the_reload_url_is_called_once_per_rotation(
    broker: BrokerDouble, start: Callable[..., Sidecar]
) -> None:
    calls: list[dict[str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            calls.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    app = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{app.server_port}/-/reload"
        sidecar = start(extra_env={"SECUREKEYS_RELOAD_URL": url})
        wait_for(lambda: read(sidecar.dir / "stripe-live") == CANARY, what="first delivery")
        assert calls == []  # the app started with its keys: nothing to reload
        for version in (2, 3):
            broker.keys["stripe-live"] = FakeKey(
                "stripe-live", (version, b"k%d" % version), (version - 1, b"old")
            )
            broker.push("stripe-live")
            wait_for(lambda v=version: len(calls) == v - 1, timeout=3, what="reload call")  # type: ignore[misc]
        time.sleep(0.3)
        assert calls == [
            {"reason": "rotated", "keys": {"stripe-live": 2}},
            {"reason": "rotated", "keys": {"stripe-live": 3}},
        ]
    finally:
        app.shutdown()
        app.server_close()
