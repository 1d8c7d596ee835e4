"""Trust on first use for the cluster's recipient key (``known-recipients.json``).

``secure-keys seal`` encrypts to the public key it reads from the ConfigMap
``secure-keys-recipient``. Anyone who can replace that ConfigMap could substitute a key of
their own and read every key sealed afterwards. So, as SSH does with ``known_hosts``, the
CLI remembers the SHA-256 fingerprint of the full public key it saw the first time for a
cluster (API server URL and controller namespace) and refuses a different key later,
until the user confirms the change with ``--trust-recipient``. ``--recipient-fingerprint``
pins on the command line instead (for CI) and leaves the file alone.

This module owns the fingerprint format, the file's format and the decision
(``decide_fetched``, ``check_file``: pure, they return the one line to print and the
store to write). Reading and writing the file (``load``, ``save``: atomic, mode 0600)
are the only I/O here.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import json
import os
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from secure_keys.core.sealing import Recipient

FINGERPRINT_PREFIX = "SHA256:"
STORE_VERSION = 1
STORE_NAME = "known-recipients.json"
PinOrigin = Literal["first-use", "trusted"]
_ORIGINS: frozenset[str] = frozenset({"first-use", "trusted"})
_DIGEST_SIZE = 32


class RecipientRefused(Exception):
    """The fetched recipient is not the one the user trusts: nothing was sealed."""


class KnownRecipientsInvalid(ValueError):
    """The pin file cannot be read as a known-recipients document."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """SHA-256 of a recipient's raw public key, written ``SHA256:`` + unpadded base64."""

    digest: bytes

    def __post_init__(self) -> None:
        if type(self.digest) is not bytes or len(self.digest) != _DIGEST_SIZE:
            raise ValueError(f"a fingerprint is {_DIGEST_SIZE} bytes of SHA-256")

    def __str__(self) -> str:
        return FINGERPRINT_PREFIX + base64.b64encode(self.digest).decode().rstrip("=")

    @classmethod
    def of(cls, recipient: Recipient) -> Fingerprint:
        return cls(sha256(recipient.public_key).digest())

    @classmethod
    def parse(cls, text: str) -> Fingerprint:
        """``SHA256:`` and 43 base64 characters (a trailing ``=`` is tolerated)."""
        if not text.startswith(FINGERPRINT_PREFIX):
            raise ValueError(f"a fingerprint starts with {FINGERPRINT_PREFIX}")
        encoded = text[len(FINGERPRINT_PREFIX) :].rstrip("=")
        try:
            digest = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a fingerprint's digest is base64") from None
        if len(digest) != _DIGEST_SIZE or base64.b64encode(digest).decode().rstrip("=") != encoded:
            raise ValueError("a fingerprint's digest is 32 bytes (43 base64 characters)")
        return cls(digest)

    def matches(self, other: Fingerprint) -> bool:
        return hmac.compare_digest(self.digest, other.digest)


@dataclass(frozen=True, slots=True)
class ClusterId:
    """Which cluster's recipient a pin is for: its API server and controller namespace."""

    server: str
    controller_namespace: str

    def __str__(self) -> str:
        return f"{self.server} (controller namespace {self.controller_namespace})"


@dataclass(frozen=True, slots=True)
class Pin:
    cluster: ClusterId
    fingerprint: Fingerprint
    key_id: str
    pinned_at: datetime.datetime
    origin: PinOrigin

    @property
    def when(self) -> str:
        return self.pinned_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class KnownRecipients:
    """Every pin, at most one per cluster."""

    pins: tuple[Pin, ...] = ()

    def find(self, cluster: ClusterId) -> Pin | None:
        return next((p for p in self.pins if p.cluster == cluster), None)

    def with_pin(self, pin: Pin) -> KnownRecipients:
        return KnownRecipients((*(p for p in self.pins if p.cluster != pin.cluster), pin))

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "version": STORE_VERSION,
                    "recipients": [
                        {
                            "server": p.cluster.server,
                            "controllerNamespace": p.cluster.controller_namespace,
                            "fingerprint": str(p.fingerprint),
                            "keyId": p.key_id,
                            "pinnedAt": p.pinned_at.astimezone(datetime.UTC).strftime(
                                "%Y-%m-%dT%H:%M:%SZ"
                            ),
                            "origin": p.origin,
                        }
                        for p in self.pins
                    ],
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> KnownRecipients:
        """Parse strictly; raises ``KnownRecipientsInvalid`` saying what is wrong."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KnownRecipientsInvalid(f"not valid JSON: {exc}") from None
        if not isinstance(document, dict) or set(document) != {"version", "recipients"}:
            raise KnownRecipientsInvalid("expected exactly the members version and recipients")
        if document["version"] != STORE_VERSION:
            raise KnownRecipientsInvalid(f"unknown version {document['version']!r}")
        if not isinstance(document["recipients"], list):
            raise KnownRecipientsInvalid("recipients must be a list")
        known = KnownRecipients()
        for index, entry in enumerate(document["recipients"]):
            try:
                pin = _pin_from_json(entry)
            except (ValueError, TypeError) as exc:
                raise KnownRecipientsInvalid(f"recipients[{index}]: {exc}") from None
            if known.find(pin.cluster) is not None:
                raise KnownRecipientsInvalid(f"recipients[{index}]: a second pin for {pin.cluster}")
            known = known.with_pin(pin)
        return known


_PIN_MEMBERS = frozenset(
    {"server", "controllerNamespace", "fingerprint", "keyId", "pinnedAt", "origin"}
)


def _pin_from_json(entry: Any) -> Pin:
    if not isinstance(entry, dict) or set(entry) != _PIN_MEMBERS:
        raise ValueError(f"expected exactly the members {sorted(_PIN_MEMBERS)}")
    if not all(isinstance(value, str) for value in entry.values()):
        raise ValueError("every member is a string")
    if entry["origin"] not in _ORIGINS:
        raise ValueError(f"origin must be one of {sorted(_ORIGINS)}")
    pinned_at = datetime.datetime.strptime(entry["pinnedAt"], "%Y-%m-%dT%H:%M:%SZ")
    origin: PinOrigin = "first-use" if entry["origin"] == "first-use" else "trusted"
    return Pin(
        cluster=ClusterId(entry["server"], entry["controllerNamespace"]),
        fingerprint=Fingerprint.parse(entry["fingerprint"]),
        key_id=entry["keyId"],
        pinned_at=pinned_at.replace(tzinfo=datetime.UTC),
        origin=origin,
    )


@dataclass(frozen=True, slots=True)
class Decision:
    """What to tell the user (one line for stderr) and the store to save, if it changed."""

    report: str
    store: KnownRecipients | None = None


def _named(recipient: Recipient, fingerprint: Fingerprint) -> str:
    return f"recipient {recipient.key_id} ({fingerprint})"


def check_file(recipient: Recipient, source: Path, *, expected: Fingerprint | None) -> str:
    """A recipient read from a file: checked only against ``--recipient-fingerprint``."""
    fingerprint = Fingerprint.of(recipient)
    if expected is None:
        return (
            f"using {_named(recipient, fingerprint)} from {source}; not checked against any "
            "pin (compare the fingerprint with your cluster's, or pass --recipient-fingerprint)"
        )
    if not fingerprint.matches(expected):
        raise RecipientRefused(
            f"{source} holds {_named(recipient, fingerprint)}, not {expected} as "
            "--recipient-fingerprint requires; nothing was sealed"
        )
    return f"{_named(recipient, fingerprint)} from {source} matches --recipient-fingerprint"


def decide_fetched(
    recipient: Recipient,
    cluster: ClusterId,
    known: KnownRecipients | None,
    *,
    expected: Fingerprint | None,
    trust: Fingerprint | None,
    now: datetime.datetime,
    store_path: Path,
) -> Decision:
    """Accept or refuse a recipient fetched from ``cluster``; raises ``RecipientRefused``.

    ``expected`` (``--recipient-fingerprint``) decides alone and the store is not used
    (``known`` may be ``None``). Otherwise the pin for ``cluster`` decides: none yet pins
    this key (first use), a matching pin accepts it, a different one refuses it unless
    ``trust`` (``--trust-recipient``) names exactly the fetched key, which replaces the pin.
    """
    fingerprint = Fingerprint.of(recipient)
    named = _named(recipient, fingerprint)
    if expected is not None:
        if not fingerprint.matches(expected):
            raise RecipientRefused(
                f"{cluster} publishes {named}, not {expected} as --recipient-fingerprint "
                "requires; nothing was sealed"
            )
        return Decision(f"{named} of {cluster} matches --recipient-fingerprint")
    if known is None:
        raise ValueError("known recipients are needed without --recipient-fingerprint")
    if trust is not None and not fingerprint.matches(trust):
        raise RecipientRefused(
            f"{cluster} publishes {named}, not {trust} as given to --trust-recipient; "
            "nothing was pinned or sealed"
        )
    pinned = known.find(cluster)
    if pinned is not None and fingerprint.matches(pinned.fingerprint):
        return Decision(f"{named} matches the key pinned for {cluster} on {pinned.when}")
    if pinned is not None and trust is None:
        raise RecipientRefused(
            f"the recipient key of {cluster} has changed: {store_path} pins "
            f"{pinned.fingerprint} ({pinned.key_id}, pinned on {pinned.when}), but the "
            f"cluster now publishes {fingerprint} ({recipient.key_id}). Someone able to "
            "write the recipient ConfigMap could have replaced it to read what you seal, "
            "so nothing was sealed. If the controller's key was legitimately replaced, "
            "confirm the new fingerprint with the cluster's operator and run again with "
            f"--trust-recipient {fingerprint}"
        )
    origin: PinOrigin = "first-use" if trust is None else "trusted"
    pin = Pin(cluster, fingerprint, recipient.key_id, now, origin)
    if pinned is not None:
        report = (
            f"trusted {named} for {cluster}, replacing {pinned.fingerprint} pinned on "
            f"{pinned.when} (in {store_path})"
        )
    elif trust is not None:
        report = f"pinned {named} for {cluster} as given to --trust-recipient (in {store_path})"
    else:
        report = (
            f"pinned {named} for {cluster} on first use (in {store_path}); compare this "
            "fingerprint with the one your cluster's operator publishes"
        )
    return Decision(report, known.with_pin(pin))


# -- the file -------------------------------------------------------------------------
def default_path() -> Path:
    """``$XDG_CONFIG_HOME/secure-keys/known-recipients.json`` (default ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "secure-keys" / STORE_NAME


def load(path: Path) -> KnownRecipients:
    """The pins in ``path``; none if it does not exist. A damaged file is refused, never
    silently replaced: that would turn every later fetch into a first use."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return KnownRecipients()
    try:
        return KnownRecipients.from_json(text)
    except KnownRecipientsInvalid as exc:
        raise KnownRecipientsInvalid(
            f"{path} is not a known-recipients file ({exc}); fix or remove it"
        ) from None


def save(path: Path, known: KnownRecipients) -> None:
    """Replace ``path`` atomically with a file of mode 0600 (its directory 0700 if new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(known.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
