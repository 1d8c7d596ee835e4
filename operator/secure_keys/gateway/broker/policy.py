"""The broker's decisions, pure: who may receive which key, which versions, until when.

Inputs are small frozen projections of the watched objects (``RunningPod``,
``DeliveryKeyView``, ``BrokerRole``) and the time; outputs are a ``Refusal`` (a CamelCase
reason and a message) or, per key, a ``Planned`` delivery: the versions to serve, the
lease, and the next moment the answer can change by itself (a grace period or a lease
half-life passing, a time window opening or closing). No I/O and no clock: the caller
passes ``now``.

What a KeyRole's ``access`` means for a pod (docs/gateway.md, "The broker"):

* ``requireMFA: true`` never grants to a ServiceAccount: such a role is ignored for pods
  (a pod cannot complete MFA). If only such roles cover a key, the refusal is
  ``MfaRequired``.
* ``timeWindows``: a role grants only while one of its windows is open. A key whose
  every granting role is closed is refused at connect (``OutsideTimeWindow``) and
  revoked on an open stream when the window closes; it is pushed again when one opens.
* ``ttl``: the lease, i.e. how long the sidecar may keep serving the material without
  hearing from the broker; past it, the sidecar removes the files (fail closed). Without
  a ``ttl`` the lease is ``DEFAULT_LEASE``. A lease never runs past the close of the
  window that grants it. On an open stream the broker renews a lease at half its life.
  With several granting roles, the longest lease wins (each role is a grant on its own).

The previous version (``.previous``) is offered only while its grace period runs from an
``archivedAt`` that carries the controller's integrity tag (``core.integrity``): a time
edited in status is not believed, and the version is not offered until the controller
stamps it again (``ArchivedAtUntrusted``, docs/controller.md). So an edit can neither
lengthen nor cut short what the broker serves, beyond withholding ``.previous`` until
the next reconcile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from secure_keys.core import sidecarenv
from secure_keys.core.integrity import archived_tag, tag_valid
from secure_keys.core.stamps import format_stamp
from secure_keys.kube import annotations as ann
from secure_keys.kube.informer import labels_of, metadata_of
from secure_keys.kube.keyroles import KeyRoleRules, binds_service_account
from secure_keys.kube.names import GRACE_ENDED_ANNOTATION, MAX_ROTATE_REQUEST, ROTATE_ANNOTATION
from secure_keys.kube.rollout import NO_ROLLOUT, Rollout, parse_rollout

DEFAULT_LEASE = timedelta(hours=1)
DEFAULT_GRACE = timedelta(hours=1)
"""The controller's default grace period (``controller/schedule.py``), when none is set."""

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DURATION_TERM = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: object) -> timedelta | None:
    """A CRD duration (``1h30m``, ``45s``, ``1.5h``); ``None`` if absent or malformed."""
    if not isinstance(text, str) or not text or len(text) > 32:
        return None
    total, at = 0.0, 0
    while at < len(text):
        term = _DURATION_TERM.match(text, at)
        if term is None:
            return None
        total += float(term.group(1)) * _UNITS[term.group(2)]
        at = term.end()
    return timedelta(seconds=total)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- projections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningPod:
    """A pod as it runs now, as the broker checks it on every stream (the webhook's
    ``PodView`` is another thing: a pod at admission, before it has a uid)."""

    namespace: str
    name: str
    uid: str
    service_account: str
    keys: frozenset[str]
    """The ``securekeys.io/keys`` annotation now (it may change while the pod runs)."""
    terminating: bool
    shares_processes: bool = False
    """``shareProcessNamespace: true`` without ``securekeys.io/all-containers-may-read-keys:
    "true"``: any container could read another's files, so nothing is delivered."""


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def project_pod(obj: Mapping[str, Any]) -> RunningPod | None:
    metadata = metadata_of(obj)
    name, namespace, uid = metadata.get("name"), metadata.get("namespace"), metadata.get("uid")
    if not (isinstance(name, str) and isinstance(namespace, str) and isinstance(uid, str)):
        return None
    annotations = metadata.get("annotations") or {}
    spec = obj.get("spec") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    spec = spec if isinstance(spec, dict) else {}
    raw_keys = annotations.get(ann.KEYS)
    keys: frozenset[str] = frozenset()
    if isinstance(raw_keys, str) and len(raw_keys) <= ann.MAX_KEYS_TEXT:
        # A longer value is not read (the webhook refuses it): the pod asked for
        # nothing, whatever a hand-built sidecar asks.
        keys = frozenset(ann.split_names(raw_keys))
    phase = (obj.get("status") or {}).get("phase")
    return RunningPod(
        namespace=namespace,
        name=name,
        uid=uid,
        service_account=str(spec.get("serviceAccountName") or "default"),
        keys=keys,
        terminating=bool(metadata.get("deletionTimestamp")) or phase in ("Succeeded", "Failed"),
        shares_processes=annotations.get(ann.SHARED_PROCESSES) != "true"
        and (spec.get("shareProcessNamespace") is True or _debugger_targets_a_reader(spec)),
    )


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _debugger_targets_a_reader(spec: Mapping[str, Any]) -> bool:
    """Whether an ephemeral container targets (``targetContainerName``) a container that
    mounts the keys or the key container's credentials: it shares that container's
    processes, so it reads those files through /proc/<pid>/root. The webhook refuses
    such a container; this holds even if the webhook was bypassed. Linear in the pod."""
    targets = set()
    for item in _items(spec.get("ephemeralContainers")):
        target = _dict(item).get("targetContainerName")
        if isinstance(target, str):
            targets.add(target)
    if not targets:
        return False
    for field in ("containers", "initContainers"):
        for item in _items(spec.get(field)):
            container = _dict(item)
            if container.get("name") not in targets:
                continue
            for mount in _items(container.get("volumeMounts")):
                if _dict(mount).get("name") in sidecarenv.RESERVED_VOLUMES:
                    return True
    return False


@dataclass(frozen=True, slots=True)
class VersionView:
    version: int
    state: str
    fingerprint: str
    archived_at: datetime | None
    kms_provider: str | None
    kms_key_id: str | None
    archive_tag: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryKeyView:
    """An ApiKey as the broker needs it: identity, delivery settings, versions (no spec
    source, no material)."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    deleting: bool
    file_name: str
    format: Literal["raw", "env", "json"]
    env_name: str | None
    mode: Literal["0400", "0440"]
    current_version: int
    versions: tuple[VersionView, ...]
    grace: timedelta
    grace_ended_through: int = 0
    """``securekeys.io/grace-ended-through``: versions up to this one are no longer
    offered as ``.previous`` (``secure-keys revoke``)."""
    resource_version: str = ""
    rollout: Rollout = NO_ROLLOUT
    """``status.rollout`` as stored (``kube.rollout``, written by the gateways)."""
    conditions_json: str = "[]"
    """``status.conditions`` (the first 32 objects) as compact JSON. A rollout write
    carries them back whole, and they are read for nothing else: kept as text, they take
    a third of the memory the parsed dictionaries took (1.6 KiB of an ApiKey's 2.6)."""
    rotation_pending: bool = False
    """A rotation under way: a rotate-requested-at value the controller has not yet
    recorded as honoured in ``status.lastRotationRequest``, or a Pending version (it
    records the request with the new Pending version, and archives the old one in a
    later write). A KeyRole's ``rotate`` waits for it."""
    last_rotation_request: str = ""
    """``status.lastRotationRequest``: the rotate-requested-at value the controller last
    honoured (a grantee's ``rotate --wait`` looks for its own)."""

    @property
    def conditions(self) -> tuple[Mapping[str, Any], ...]:
        """``status.conditions`` as stored (the first 32 objects)."""
        parsed: list[Mapping[str, Any]] = json.loads(self.conditions_json)
        return tuple(parsed)

    def current(self) -> VersionView | None:
        """The Active record that ``status.currentVersion`` names."""
        for record in self.versions:
            if record.version == self.current_version and record.state == "Active":
                return record
        return None

    def previous(
        self, now: datetime, tag_key: bytes | bytearray
    ) -> tuple[VersionView, datetime] | None:
        """The newest Archived version still in its grace period, and when it ends (the
        controller's ``rotation.grace_versions``); only an ``archivedAt`` carrying a valid
        tag under ``tag_key`` (the controller's fingerprint key) counts."""
        current = self.current()
        if current is None:
            return None
        best: tuple[VersionView, datetime] | None = None
        for record in self.versions:
            if record.state != "Archived" or record.archived_at is None:
                continue
            if record.version >= current.version or record.version <= self.grace_ended_through:
                continue
            stamp = format_stamp(record.archived_at)
            if not tag_valid(
                archived_tag(tag_key, self.uid, record.version, stamp), record.archive_tag
            ):
                continue
            ends = record.archived_at + self.grace
            if now < ends and (best is None or record.version > best[0].version):
                best = (record, ends)
        return best


def _default_env_name(name: str) -> str:
    return re.sub(r"[-.]", "_", name.upper())


def project_delivery_key(obj: Mapping[str, Any]) -> DeliveryKeyView | None:
    metadata = metadata_of(obj)
    name, namespace, uid = metadata.get("name"), metadata.get("namespace"), metadata.get("uid")
    if not (isinstance(name, str) and isinstance(namespace, str) and isinstance(uid, str)):
        return None
    spec = _dict(obj.get("spec"))
    delivery, rotation, kms = (_dict(spec.get(m)) for m in ("delivery", "rotation", "kms"))
    status = _dict(obj.get("status"))
    fmt = delivery.get("format", "raw")
    mode = delivery.get("mode", "0400")
    if fmt not in ("raw", "env", "json") or mode not in ("0400", "0440"):
        return None
    grace = parse_duration(rotation.get("gracePeriod"))
    if grace is None:
        interval = parse_duration(rotation.get("interval"))
        grace = DEFAULT_GRACE if interval is None else min(DEFAULT_GRACE, interval / 2)
    versions: list[VersionView] = []
    for record in status.get("versions") or []:
        if not isinstance(record, dict) or type(record.get("version")) is not int:
            continue
        versions.append(
            VersionView(
                version=record["version"],
                state=str(record.get("state", "")),
                fingerprint=str(record.get("fingerprint", "")),
                archived_at=_time(record.get("archivedAt")),
                kms_provider=record.get("kmsProvider") or kms.get("provider"),
                kms_key_id=record.get("kmsKeyId") or kms.get("keyId"),
                archive_tag=tag if isinstance(tag := record.get("archiveTag"), str) else None,
            )
        )
    env_name = delivery.get("envName")
    current = status.get("currentVersion")
    return DeliveryKeyView(
        namespace=namespace,
        name=name,
        uid=uid,
        labels=labels_of(metadata),
        deleting=bool(metadata.get("deletionTimestamp")),
        file_name=str(delivery.get("fileName") or name),
        format=fmt,
        env_name=(env_name or _default_env_name(name)) if fmt == "env" else None,
        mode=mode,
        current_version=current if type(current) is int else 0,
        versions=tuple(versions),
        grace=grace,
        grace_ended_through=_grace_ended(metadata.get("annotations")),
        resource_version=str(metadata.get("resourceVersion") or ""),
        rollout=parse_rollout(status),
        conditions_json=json.dumps(
            [c for c in _items(status.get("conditions"))[:32] if isinstance(c, dict)],
            separators=(",", ":"),
        ),
        rotation_pending=_rotation_pending(metadata.get("annotations"), status),
        last_rotation_request=_short(status.get("lastRotationRequest"), MAX_ROTATE_REQUEST),
    )


def _short(value: object, limit: int) -> str:
    return value if isinstance(value, str) and len(value) <= limit else ""


def _rotation_pending(annotations: object, status: Mapping[str, Any]) -> bool:
    for record in _items(status.get("versions")):
        if isinstance(record, dict) and record.get("state") == "Pending":
            return True
    requested = _dict(annotations).get(ROTATE_ANNOTATION)
    # A longer value is recorded as a digest (controller.models): never written by
    # secure-keys, so not compared here.
    if not isinstance(requested, str) or len(requested) > MAX_ROTATE_REQUEST:
        return False
    return requested != status.get("lastRotationRequest")


def _grace_ended(annotations: object) -> int:
    value = _dict(annotations).get(GRACE_ENDED_ANNOTATION)
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        return int(value)
    return 0


@dataclass(frozen=True, slots=True)
class TimeWindow:
    days: frozenset[int]
    """0 = Monday."""
    start: time
    end: time
    zone: ZoneInfo

    def _bounds(self, now: datetime) -> Iterable[tuple[datetime, datetime]]:
        """The occurrences of this window that could contain or follow ``now``."""
        local = now.astimezone(self.zone).date()
        for offset in range(-1, 8):
            day = local + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, self.start, self.zone)
            closes_day = day if self.end > self.start else day + timedelta(days=1)
            yield opens, datetime.combine(closes_day, self.end, self.zone)

    def open_until(self, now: datetime) -> datetime | None:
        """When the occurrence open at ``now`` closes, or ``None`` if closed now."""
        for opens, closes in self._bounds(now):
            if opens <= now < closes:
                return closes.astimezone(UTC)
        return None

    def next_boundary(self, now: datetime) -> datetime | None:
        found = [b for pair in self._bounds(now) for b in pair if b > now]
        return min(found).astimezone(UTC) if found else None


@dataclass(frozen=True, slots=True)
class BrokerRole:
    """A KeyRole as the broker needs it: the rules and the ``access`` conditions."""

    name: str
    namespace: str
    rules: KeyRoleRules
    deleting: bool
    ttl: timedelta | None
    windows: tuple[TimeWindow, ...]
    require_mfa: bool


def _windows(raw: object) -> tuple[TimeWindow, ...] | None:
    if not isinstance(raw, list):
        return ()
    windows = []
    for item in raw:
        if not isinstance(item, dict):
            return None
        try:
            days = frozenset(_DAYS.index(d) for d in item.get("days") or [])
            start = time.fromisoformat(str(item.get("start")))
            end = time.fromisoformat(str(item.get("end")))
            zone = ZoneInfo(str(item.get("timeZone") or "UTC"))
        except (ValueError, ZoneInfoNotFoundError):
            return None  # unparseable: treated as a role that grants nothing
        windows.append(TimeWindow(days, start, end, zone))
    return tuple(windows)


def project_role(obj: Mapping[str, Any]) -> BrokerRole | None:
    metadata = metadata_of(obj)
    name, namespace = metadata.get("name"), metadata.get("namespace")
    spec = obj.get("spec")
    if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(spec, dict):
        return None
    try:
        rules = KeyRoleRules.model_validate(spec)
    except ValidationError:
        return None
    access = _dict(spec.get("access"))
    windows = _windows(access.get("timeWindows"))
    if windows is None:
        return None
    return BrokerRole(
        name=name,
        namespace=namespace,
        rules=rules,
        deleting=bool(metadata.get("deletionTimestamp")),
        ttl=parse_duration(access.get("ttl")),
        windows=windows,
        require_mfa=bool(access.get("requireMFA")),
    )


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    message: str
    wake_at: datetime | None = None
    """When the answer may change by itself (a time window opening)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A key granted now: until when (the lease), and when to look again by itself."""

    lease_expires_at: datetime
    wake_at: datetime | None


def check_pod(
    pod: RunningPod | None, *, name: str, uid: str, keys: Iterable[str]
) -> Refusal | None:
    """The token's pod must exist with that uid, be running, keep its containers apart,
    and ask (in its annotation, now) for every requested key.

    Whether the gateway injected the pod is not asked: the ``securekeys.io/injected``
    annotation is anyone's to write, and the KeyRole (per ServiceAccount) is the gate
    (docs/gateway.md, "What the broker trusts")."""
    if pod is None:
        return Refusal("PodNotFound", f'pod "{name}" does not exist')
    if pod.uid != uid:
        return Refusal("PodUidMismatch", f'pod "{name}" is not the pod the token was issued to')
    if pod.terminating:
        return Refusal("PodTerminating", f'pod "{name}" is terminating')
    if pod.shares_processes:
        return Refusal(
            "SharedProcessNamespace",
            f'pod "{name}" shares its process namespace, or a debug container targets a '
            "container that reads its keys, without accepting that every container may "
            f"read its keys ({ann.SHARED_PROCESSES})",
        )
    extra = [k for k in keys if k not in pod.keys]
    if extra:
        return Refusal(
            "KeyNotRequested",
            f'pod "{name}" did not ask for ApiKey {", ".join(extra)} in its {ann.KEYS} annotation',
        )
    return None


def check_account(uid: str | None, *, name: str, token_uid: str) -> Refusal | None:
    """The token's ServiceAccount must still exist, and be the same object (``uid``: the
    cache's, ``None`` if it is gone) the token was issued for (``token_uid``)."""
    if uid is None:
        return Refusal("ServiceAccountNotFound", f'ServiceAccount "{name}" does not exist')
    if token_uid and uid != token_uid:
        return Refusal(
            "ServiceAccountReplaced",
            f'ServiceAccount "{name}" was deleted and created again since the token was issued',
        )
    return None


def grant(
    pod: RunningPod,
    key: str,
    apikeys: Mapping[str, DeliveryKeyView],
    roles: Iterable[BrokerRole],
    now: datetime,
) -> Grant | Refusal:
    """May ``pod``'s ServiceAccount receive ``key`` now, and on what terms."""
    view = apikeys.get(key)
    if view is None or view.deleting:
        return Refusal("KeyNotFound", f'no ApiKey "{key}" in namespace "{pod.namespace}"')
    covering = [
        role
        for role in roles
        if not role.deleting
        and role.namespace == pod.namespace
        and "read" in role.rules.permissions
        and role.rules.keys.covers(key, view.labels)
        and any(
            binds_service_account(s, role.namespace, pod.namespace, pod.service_account)
            for s in role.rules.subjects
        )
    ]
    usable = [role for role in covering if not role.require_mfa]
    if not usable:
        if covering:
            return Refusal(
                "MfaRequired",
                f'every KeyRole granting "{key}" requires MFA, which a ServiceAccount '
                "cannot complete",
            )
        return Refusal(
            "KeyNotGranted",
            f'ServiceAccount "{pod.service_account}" is not bound to ApiKey "{key}" with '
            f'read by any KeyRole in namespace "{pod.namespace}"',
        )
    best: datetime | None = None
    wakes: list[datetime] = []
    for role in usable:
        lease = now + (role.ttl or DEFAULT_LEASE)
        if role.windows:
            closes = [c for w in role.windows if (c := w.open_until(now)) is not None]
            wakes.extend(b for w in role.windows if (b := w.next_boundary(now)) is not None)
            if not closes:
                continue
            lease = min(lease, max(closes))
        best = lease if best is None else max(best, lease)
    if best is None:
        return Refusal(
            "OutsideTimeWindow",
            f'no time window granting "{key}" is open now',
            min(wakes) if wakes else None,
        )
    wakes.append(now + (best - now) / 2)  # renew at half-life
    return Grant(best, min(wakes))


def next_wake(*candidates: datetime | None) -> datetime | None:
    found = [c for c in candidates if c is not None]
    return min(found) if found else None
