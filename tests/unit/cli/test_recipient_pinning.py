"""`secure-keys seal` checks the recipient it fetches: trust on first use, like known_hosts.

Each test runs ``main`` with a fake fetch function standing in for the cluster, and a
private ``$XDG_CONFIG_HOME``, then looks at the exit status, stdout, the one stderr line
saying what was checked, and the pin file.
"""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest
import yaml

from secure_keys.cli import main as cli
from secure_keys.cli.kubeapi import FetchedRecipient
from secure_keys.cli.pins import (
    ClusterId,
    Fingerprint,
    KnownRecipients,
    KnownRecipientsInvalid,
    Pin,
    default_path,
)
from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from tests.conftest import CANARY

SERVER = "https://cluster.example:6443"
NAMESPACE = "secure-keys-system"


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def plaintext(tmp_path: Path) -> Path:
    path = tmp_path / "plaintext"
    path.write_text(CANARY + "\n")
    return path


class FakeCluster:
    """Publishes whichever recipient document it is given; counts fetches."""

    def __init__(self, key: RecipientPrivateKey, server: str = SERVER) -> None:
        self.document = key.public().to_json()
        self.server = server
        self.fetches = 0

    def __call__(self, kubeconfig: Path | None, controller_namespace: str) -> FetchedRecipient:
        self.fetches += 1
        return FetchedRecipient(
            ClusterId(self.server, controller_namespace), self.document, "from-context"
        )


def _seal(
    fetch: FakeCluster,
    plaintext: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, str, str]:
    code = cli.main(
        ["seal", "api", "-n", "team", "--from-file", str(plaintext), *extra], fetch=fetch
    )
    out, err = capsys.readouterr()
    return code, out, err


def _opens_with(key: RecipientPrivateKey, manifest_text: str) -> bool:
    sealed = yaml.safe_load(manifest_text)["spec"]["source"]["sealed"]
    opened = open_sealed(key, sealed["ciphertext"], namespace="team", name="api")
    return opened == CANARY.encode()


def _pins(config_home: Path) -> list[dict[str, str]]:
    document = json.loads((config_home / "secure-keys" / "known-recipients.json").read_text())
    recipients: list[dict[str, str]] = document["recipients"]
    return recipients


def test_first_use_pins_the_key_and_says_so(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RecipientPrivateKey.generate()
    fingerprint = str(Fingerprint.of(key.public()))
    code, out, err = _seal(FakeCluster(key), plaintext, capsys)
    assert code == 0, err
    assert _opens_with(key, out)
    assert "on first use" in err
    assert fingerprint in err
    assert key.public().key_id in err
    assert SERVER in err
    store = config_home / "secure-keys" / "known-recipients.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    [pin] = _pins(config_home)
    assert pin["server"] == SERVER
    assert pin["controllerNamespace"] == NAMESPACE
    assert pin["fingerprint"] == fingerprint
    assert pin["origin"] == "first-use"
    assert CANARY not in store.read_text()


def test_a_matching_key_is_accepted_and_the_check_is_reported(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RecipientPrivateKey.generate()
    cluster = FakeCluster(key)
    assert _seal(cluster, plaintext, capsys)[0] == 0
    before = (config_home / "secure-keys" / "known-recipients.json").read_text()
    code, out, err = _seal(cluster, plaintext, capsys)
    assert code == 0, err
    assert _opens_with(key, out)
    assert f"matches the key pinned for {SERVER}" in err
    assert "first use" not in err
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert f"on {today}" in err
    assert (config_home / "secure-keys" / "known-recipients.json").read_text() == before


@pytest.mark.parametrize("to_file", [False, True], ids=["stdout", "output-file"])
def test_a_changed_key_is_refused_and_nothing_is_written(
    config_home: Path,
    plaintext: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    to_file: bool,
) -> None:
    original, replaced = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    assert _seal(FakeCluster(original), plaintext, capsys)[0] == 0
    store = config_home / "secure-keys" / "known-recipients.json"
    pinned = store.read_text()
    output = tmp_path / "manifest.yaml"
    extra = ("-o", str(output)) if to_file else ()
    code, out, err = _seal(FakeCluster(replaced), plaintext, capsys, *extra)
    assert code == 2
    assert out == ""
    assert not output.exists()
    old, new = Fingerprint.of(original.public()), Fingerprint.of(replaced.public())
    assert str(old) in err
    assert str(new) in err
    assert f"--trust-recipient {new}" in err
    assert "Traceback" not in err
    assert store.read_text() == pinned


def test_trust_recipient_accepts_exactly_the_named_change(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, replaced = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    assert _seal(FakeCluster(original), plaintext, capsys)[0] == 0
    new = str(Fingerprint.of(replaced.public()))
    other = str(Fingerprint.of(RecipientPrivateKey.generate().public()))
    code, out, err = _seal(FakeCluster(replaced), plaintext, capsys, "--trust-recipient", other)
    assert code == 2
    assert out == ""
    assert _pins(config_home)[0]["fingerprint"] == str(Fingerprint.of(original.public()))

    code, out, err = _seal(FakeCluster(replaced), plaintext, capsys, "--trust-recipient", new)
    assert code == 0, err
    assert _opens_with(replaced, out)
    assert "trusted" in err
    assert str(Fingerprint.of(original.public())) in err  # names the pin it replaced
    [pin] = _pins(config_home)
    assert pin["fingerprint"] == new
    assert pin["origin"] == "trusted"
    code, _, err = _seal(FakeCluster(replaced), plaintext, capsys)
    assert code == 0, err
    assert "matches the key pinned" in err


def test_recipient_fingerprint_pins_on_the_command_line(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RecipientPrivateKey.generate()
    right = str(Fingerprint.of(key.public()))
    wrong = str(Fingerprint.of(RecipientPrivateKey.generate().public()))
    code, out, err = _seal(FakeCluster(key), plaintext, capsys, "--recipient-fingerprint", wrong)
    assert code == 2
    assert out == ""
    assert right in err
    assert wrong in err
    code, out, err = _seal(FakeCluster(key), plaintext, capsys, "--recipient-fingerprint", right)
    assert code == 0, err
    assert _opens_with(key, out)
    assert "matches --recipient-fingerprint" in err
    assert not (config_home / "secure-keys").exists()  # CI: the pin file is left alone


def test_recipient_fingerprint_overrides_a_stale_pin_without_touching_it(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original, replaced = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    assert _seal(FakeCluster(original), plaintext, capsys)[0] == 0
    pinned = _pins(config_home)
    right = str(Fingerprint.of(replaced.public()))
    code, out, _ = _seal(FakeCluster(replaced), plaintext, capsys, "--recipient-fingerprint", right)
    assert code == 0
    assert _opens_with(replaced, out)
    assert _pins(config_home) == pinned


def test_pins_are_per_cluster(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    assert _seal(FakeCluster(first), plaintext, capsys)[0] == 0
    code, _, err = _seal(FakeCluster(second, "https://other.example:6443"), plaintext, capsys)
    assert code == 0, err
    assert "on first use" in err
    code, _, err = _seal(
        FakeCluster(second), plaintext, capsys, "--controller-namespace", "elsewhere"
    )
    assert code == 0, err
    assert "on first use" in err
    assert len(_pins(config_home)) == 3


@pytest.mark.parametrize(
    "document",
    [
        "",
        "{}",
        '{"keyId": "x25519:0000000000000000", "publicKey": "AAAA"}',
        "not json",
    ],
)
def test_the_published_document_is_validated_before_anything(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str], document: str
) -> None:
    cluster = FakeCluster(RecipientPrivateKey.generate())
    cluster.document = document
    code, out, err = _seal(cluster, plaintext, capsys)
    assert code == 2
    assert out == ""
    assert "ConfigMap secure-keys-system/secure-keys-recipient" in err
    assert not (config_home / "secure-keys").exists()


def test_a_mismatched_key_id_in_the_document_is_refused(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, other = RecipientPrivateKey.generate(), RecipientPrivateKey.generate()
    cluster = FakeCluster(key)
    document = json.loads(cluster.document)
    document["keyId"] = other.public().key_id
    cluster.document = json.dumps(document)
    code, out, err = _seal(cluster, plaintext, capsys)
    assert (code, out) == (2, "")
    assert "does not match its publicKey" in err


def test_a_damaged_pin_file_is_refused_not_replaced(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = config_home / "secure-keys" / "known-recipients.json"
    store.parent.mkdir(parents=True)
    store.write_text("{damaged")
    code, out, err = _seal(FakeCluster(RecipientPrivateKey.generate()), plaintext, capsys)
    assert (code, out) == (2, "")
    assert str(store) in err
    assert store.read_text() == "{damaged"


def test_recipient_file_prints_the_fingerprint_it_used(
    config_home: Path, plaintext: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = RecipientPrivateKey.generate()
    recipient_file = tmp_path / "recipient.json"
    recipient_file.write_text(key.public().to_json())
    cluster = FakeCluster(RecipientPrivateKey.generate())
    code, out, err = _seal(cluster, plaintext, capsys, "--recipient-file", str(recipient_file))
    assert code == 0, err
    assert cluster.fetches == 0
    assert _opens_with(key, out)
    assert str(Fingerprint.of(key.public())) in err
    assert str(recipient_file) in err
    wrong = str(Fingerprint.of(RecipientPrivateKey.generate().public()))
    code, out, err = _seal(
        cluster,
        plaintext,
        capsys,
        "--recipient-file",
        str(recipient_file),
        "--recipient-fingerprint",
        wrong,
    )
    assert (code, out) == (2, "")
    assert not (config_home / "secure-keys").exists()


def test_a_malformed_fingerprint_argument_is_a_usage_error(
    config_home: Path, plaintext: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster(RecipientPrivateKey.generate())
    for value in ("SHA256:short", "MD5:" + "A" * 43, "A" * 43):
        with pytest.raises(SystemExit) as exited:
            _seal(cluster, plaintext, capsys, "--trust-recipient", value)
        assert exited.value.code == 2
    assert cluster.fetches == 0


def test_fingerprint_text_round_trips_and_is_strict() -> None:
    fingerprint = Fingerprint.of(RecipientPrivateKey.generate().public())
    text = str(fingerprint)
    assert text.startswith("SHA256:")
    assert len(text) == len("SHA256:") + 43
    assert Fingerprint.parse(text) == fingerprint
    assert Fingerprint.parse(text + "=") == fingerprint
    for bad in (text[:-1], text + "A", text.replace("SHA256:", "sha256:"), "SHA256:" + "!" * 43):
        with pytest.raises(ValueError, match="fingerprint"):
            Fingerprint.parse(bad)


def test_known_recipients_round_trip_and_strict_parsing() -> None:
    pin = Pin(
        ClusterId(SERVER, NAMESPACE),
        Fingerprint.of(RecipientPrivateKey.generate().public()),
        "x25519:0011223344556677",
        datetime.datetime(2025, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "first-use",
    )
    known = KnownRecipients((pin,))
    assert KnownRecipients.from_json(known.to_json()) == known
    document = json.loads(known.to_json())
    document["recipients"].append(document["recipients"][0])
    with pytest.raises(KnownRecipientsInvalid, match="second pin"):
        KnownRecipients.from_json(json.dumps(document))
    document["recipients"] = [dict(document["recipients"][0], origin="guessed")]
    with pytest.raises(KnownRecipientsInvalid, match="origin"):
        KnownRecipients.from_json(json.dumps(document))
    with pytest.raises(KnownRecipientsInvalid, match="version"):
        KnownRecipients.from_json('{"version": 2, "recipients": []}')


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_path() == tmp_path / "secure-keys" / "known-recipients.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".config" / "secure-keys" / "known-recipients.json"
