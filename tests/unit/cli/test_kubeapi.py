"""The CLI against an HTTP API server: kubeconfig, namespace, errors without tracebacks.

A small threaded HTTP server plays the API server, so these tests go through the real
client (aiohttp) and the real kubeconfig parsing, with no cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from secure_keys.cli import kubeapi
from secure_keys.cli import main as cli
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from secure_keys.kube.client import CONFIGMAPS
from secure_keys.kube.names import ROTATE_ANNOTATION
from secure_keys_dev import pki
from tests.conftest import CANARY

TOKEN = "test-bearer-token-7f1e"
RECIPIENT_PATH = "/api/v1/namespaces/secure-keys-system/configmaps/secure-keys-recipient"


Answer = tuple[int, dict[str, Any]]
Route = Answer | Callable[[dict[str, Any]], Answer]
"""A fixed answer, or one made from the request's JSON body."""


@dataclass
class FakeApiServer:
    """Answers each path with a fixed (status, JSON body); records what it was sent."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            fake.requests.append((self.command, self.path, dict(self.headers), body))
            route = fake.routes.get(
                (self.command, self.path),
                (404, {"kind": "Status", "reason": "NotFound", "message": "no route"}),
            )
            status, document = route(json.loads(body or b"{}")) if callable(route) else route
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _answer  # noqa: N815 - http.server's naming
        do_PATCH = _answer  # noqa: N815
        do_POST = _answer  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _kubeconfig(path: Path, server: str, namespace: str | None = "from-context") -> Path:
    context: dict[str, str] = {"cluster": "c", "user": "u"}
    if namespace is not None:
        context["namespace"] = namespace
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path / "config"


def _publish(server: FakeApiServer, key: RecipientPrivateKey) -> None:
    server.routes[("GET", RECIPIENT_PATH)] = (
        200,
        {"kind": "ConfigMap", "data": {"recipient.json": key.public().to_json()}},
    )


def test_seal_fetches_with_the_kubeconfig_and_uses_its_namespace(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RecipientPrivateKey.generate()
    _publish(server, key)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    plaintext = tmp_path / "plaintext"
    plaintext.write_text(CANARY)
    code = cli.main(["--kubeconfig", str(kubeconfig), "seal", "api", "--from-file", str(plaintext)])
    out, err = capsys.readouterr()
    assert code == 0, err
    manifest = yaml.safe_load(out)
    assert manifest["metadata"] == {"name": "api", "namespace": "from-context"}
    sealed = manifest["spec"]["source"]["sealed"]["ciphertext"]
    assert open_sealed(key, sealed, namespace="from-context", name="api") == CANARY.encode()
    assert "sealing for namespace 'from-context'" in err
    assert "on first use" in err
    assert server.url in err
    [(method, path, headers, _)] = server.requests
    assert (method, path) == ("GET", RECIPIENT_PATH)
    assert headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("status", "reason", "message"),
    [
        (403, "Forbidden", 'configmaps "secure-keys-recipient" is forbidden'),
        (404, "NotFound", 'configmaps "secure-keys-recipient" not found'),
    ],
)
def test_an_api_error_is_reported_with_exit_1(
    server: FakeApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    status: int,
    reason: str,
    message: str,
) -> None:
    server.routes[("GET", RECIPIENT_PATH)] = (
        status,
        {"kind": "Status", "reason": reason, "message": message},
    )
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    code = cli.main(["--kubeconfig", str(kubeconfig), "seal", "api", "-n", "team"])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert f"secure-keys: error: the API server said {status} {reason}: {message}" in err
    assert "--recipient-file" in err
    assert "Traceback" not in err


def test_a_configmap_without_the_document_is_reported(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.routes[("GET", RECIPIENT_PATH)] = (200, {"kind": "ConfigMap", "data": {}})
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    code = cli.main(["--kubeconfig", str(kubeconfig), "seal", "api", "-n", "team"])
    _, err = capsys.readouterr()
    assert code == 1
    assert "has no data.recipient.json" in err


def test_rotate_patches_the_annotation_in_the_context_namespace(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = "/apis/securekeys.io/v1alpha1/namespaces/from-context/apikeys/api"
    server.routes[("PATCH", path)] = (200, {"kind": "ApiKey"})
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 0
    out, _ = capsys.readouterr()
    [(method, sent_path, headers, body)] = server.requests
    assert (method, sent_path) == ("PATCH", path)
    assert headers["Content-Type"] == "application/merge-patch+json"
    value = json.loads(body)["metadata"]["annotations"][ROTATE_ANNOTATION]
    assert out == f"rotation of from-context/api requested ({value})\n"


REVIEWS_PATH = "/apis/securekeys.io/v1alpha1/namespaces/from-context/keyaccessreviews"
FORBIDDEN = {"kind": "Status", "reason": "Forbidden", "message": "cannot patch apikeys"}


def _forbidden_patch(server: FakeApiServer) -> None:
    path = "/apis/securekeys.io/v1alpha1/namespaces/from-context/apikeys/api"
    server.routes[("PATCH", path)] = (403, FORBIDDEN)
    _publish(server, RecipientPrivateKey.generate())


def test_rotate_without_rbac_asks_the_gateway_through_a_review(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone RBAC does not let patch the ApiKey asks the gateway (a KeyRole's rotate):
    a dry-run KeyAccessReview of operation rotate, with a proof of the caller's token."""
    _forbidden_patch(server)
    answer = {
        "allowed": True,
        "reason": "RotationRequested",
        "message": "granted by KeyRole payments-oncall",
        "rotationRequest": "2026-12-07T10:00:00Z-0a1b2c",
    }
    server.routes[("POST", f"{REVIEWS_PATH}?dryRun=All")] = (200, {"status": answer})
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 0
    out, _ = capsys.readouterr()
    assert out == (
        "rotation of from-context/api requested (2026-12-07T10:00:00Z-0a1b2c, granted by "
        "KeyRole payments-oncall)\n"
    )
    [review] = [json.loads(b) for m, _, _, b in server.requests if m == "POST"]
    assert review["kind"] == "KeyAccessReview"
    assert review["spec"]["operation"] == "rotate"
    assert review["spec"]["key"] == "api"
    assert review["spec"]["proof"]["kind"] == "token"
    assert TOKEN not in json.dumps(review)  # the token goes sealed


def test_rotate_refused_by_rbac_and_every_role_exits_1_saying_what_would_grant_it(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _forbidden_patch(server)
    refusal = {
        "allowed": False,
        "reason": "RotateNotGranted",
        "message": "patch on apikeys (Kubernetes RBAC), or a KeyRole ... would grant it",
    }
    server.routes[("POST", f"{REVIEWS_PATH}?dryRun=All")] = (200, {"status": refusal})
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 1
    _, err = capsys.readouterr()
    assert "refused: RotateNotGranted: patch on apikeys (Kubernetes RBAC)" in err
    assert "Traceback" not in err


def test_rotate_of_a_missing_key_exits_1(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url, namespace=None)
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 1
    _, err = capsys.readouterr()
    assert "the API server said 404 NotFound: no route" in err
    assert server.requests[0][1].startswith("/apis/securekeys.io/v1alpha1/namespaces/default/")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_unreachable_server_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", url)
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 1
    _, err = capsys.readouterr()
    assert f"cannot reach the API server at {url}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "does not exist"),
        # PyYAML's own message would quote this line, token and all.
        (f"users:\n- name: u\n  user:\n    token: {TOKEN}: x\n", "not valid YAML at line 4"),
        ("- a list", "not a kubeconfig document"),
        (
            yaml.safe_dump({"contexts": [], "current-context": "missing"}),
            "context 'missing' is not defined",
        ),
        (
            yaml.safe_dump(
                {
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            ),
            "'clusters' is not defined",
        ),
    ],
    ids=["missing", "bad-yaml", "not-a-mapping", "no-context", "no-clusters"],
)
def test_kubeconfig_problems_exit_2_without_quoting_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, expected: str
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if text is not None:
        kubeconfig.write_text(text)
    for argv in (["rotate", "api"], ["seal", "api", "-n", "team"]):
        assert cli.main(["--kubeconfig", str(kubeconfig), *argv]) == 2
        _, err = capsys.readouterr()
        assert expected in err
        assert TOKEN not in err
        assert "Traceback" not in err


def test_a_failing_credential_plugin_exits_2(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    document = yaml.safe_load(kubeconfig.read_text())
    document["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "false",
            "interactiveMode": "Never",
        }
    }
    kubeconfig.write_text(yaml.safe_dump(document))
    assert cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"]) == 2
    _, err = capsys.readouterr()
    assert "credential plugin" in err
    assert "Traceback" not in err
    assert server.requests == []


def test_recipient_file_needs_no_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    key = RecipientPrivateKey.generate()
    recipient = tmp_path / "recipient.json"
    recipient.write_text(key.public().to_json())
    plaintext = tmp_path / "plaintext"
    plaintext.write_text(CANARY)
    code = cli.main(
        ["seal", "api", "--recipient-file", str(recipient), "--from-file", str(plaintext)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert yaml.safe_load(out)["metadata"]["namespace"] == "default"


def test_a_token_with_a_line_break_is_refused_without_repeating_it(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `token: |` block scalar keeps its newline; the HTTP library's own refusal would
    quote the header, token and all, into the error line (and a CI log)."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    document = yaml.safe_load(kubeconfig.read_text())
    document["users"][0]["user"]["token"] = CANARY + "\n"
    kubeconfig.write_text(yaml.safe_dump(document))
    code = cli.main(["--kubeconfig", str(kubeconfig), "rotate", "api"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "control character" in err
    assert CANARY not in err
    assert server.requests == []


def test_a_program_may_call_the_cli_client_from_inside_its_own_event_loop(
    server: FakeApiServer, tmp_path: Path
) -> None:
    """The blocking transport's requests run without an event loop of their own, so a
    program that is itself asyncio (and calls ``KeyManager`` or ``kubeapi``) is not told
    that ``asyncio.run`` cannot be nested."""
    server.routes[("GET", "/api/v1/namespaces/ns/configmaps/c")] = (200, {"data": {"k": "v"}})
    target = kubeapi.load_target(_kubeconfig(tmp_path / "kubeconfig", server.url))

    async def program() -> dict[str, Any]:
        return kubeapi.run_api(target, lambda api: api.get(CONFIGMAPS, "ns", "c"))

    assert asyncio.run(program()) == {"data": {"k": "v"}}


def test_a_get_loads_only_what_a_get_uses(tmp_path: Path) -> None:
    """A `secure-keys get` in a pipeline pays for every module it imports
    (bench/access.py): the other verbs' modules, asyncio, aiohttp, structlog, the local
    store, the pin file's module, the broker's wire format and the credential plugin's
    module stay unloaded through a whole read (here one that cannot connect)."""
    ca = pki.CertificateAuthority.generate("startup-ca")
    user = ca.issue_client("startup-user", ())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"https://127.0.0.1:{_closed_port()}",
                            "certificate-authority-data": base64.b64encode(ca.cert_pem).decode(),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "u",
                        "user": {
                            "client-certificate-data": base64.b64encode(user.cert_pem).decode(),
                            "client-key-data": base64.b64encode(user.key_pem).decode(),
                        },
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    unused = (
        "asyncio",
        "aiohttp",
        "structlog",
        "secure_keys.store",
        "secure_keys.cli.local",
        "secure_keys.cli.pins",
        "secure_keys.cli.rollout",
        "secure_keys.cli.audit",
        "secure_keys.cli.seal",
        "secure_keys.core.delivery",
        "secure_keys.kube.exec_auth",
    )
    code = (
        "import sys\n"
        "from secure_keys.cli.main import main\n"
        f"status = main(['--kubeconfig', {str(kubeconfig)!r}, 'get', 'k', '-n', 'ns'])\n"
        f"print(status, sorted(m for m in {unused!r} if m in sys.modules))\n"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "1 []", done.stdout + done.stderr
    assert "cannot reach the API server" in done.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rotate_wait_through_a_keyrole_follows_the_rollout_with_list_reviews(
    server: FakeApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyRole's rotate grantee, whom RBAC lets neither patch nor get the ApiKey, waits
    for its rotation: list reviews of that one key follow it until the controller has
    honoured this very request (another rotation does not end the wait) and every pod
    holds the new version."""
    from secure_keys.cli import rollout

    monkeypatch.setattr(rollout, "POLL_SECONDS", 0.01)
    _forbidden_patch(server)
    server.routes[("GET", "/apis/securekeys.io/v1alpha1/namespaces/from-context/apikeys/api")] = (
        403,
        {"kind": "Status", "reason": "Forbidden", "message": "apikeys is forbidden"},
    )

    requested = "2026-12-07T10:00:00Z-0a1b2c-role"

    def key(
        version: int, current: int, consumers: int, *behind: str, honoured: str = ""
    ) -> dict[str, Any]:
        return {
            "lastRotationRequest": honoured,
            "name": "api",
            "currentVersion": version,
            "versions": [{"version": version, "state": "Active", "fingerprint": "f"}],
            "permissions": ["rotate"],
            "rollout": {
                "version": version,
                "consumers": consumers,
                "current": current,
                "stragglers": list(behind),
            },
        }

    listed = iter(
        [
            key(1, 2, 2),
            key(2, 2, 2, honoured="2026-12-07T09:59:59Z-ffffff"),  # someone else's
            key(3, 1, 2, "web-1", honoured=requested),
            key(3, 2, 2, honoured=requested),
        ]
    )
    reviews: list[dict[str, Any]] = []

    def gateway(body: dict[str, Any]) -> Answer:
        reviews.append(body["spec"])
        if body["spec"]["operation"] == "rotate":
            status = {
                "allowed": True,
                "reason": "RotationRequested",
                "message": "granted by KeyRole oncall",
                "rotationRequest": requested,
                "keys": [key(1, 2, 2)],
            }
        else:
            status = {"allowed": True, "reason": "Listed", "keys": [next(listed)]}
        return 200, {"status": status}

    server.routes[("POST", f"{REVIEWS_PATH}?dryRun=All")] = gateway
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server.url)
    command = ["--kubeconfig", str(kubeconfig), "rotate", "api", "--wait", "-o", "json"]
    assert cli.main(command) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["version"], report["current"], report["consumers"]) == (3, 2, 2)
    assert report["rotated"] is True
    assert [r["operation"] for r in reviews] == ["rotate", "list", "list", "list", "list"]
    assert {r.get("key") for r in reviews} == {"api"}
