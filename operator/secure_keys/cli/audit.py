"""``secure-keys audit`` against the cluster: who read what, and checking an exported log.

* ``secure-keys audit [-n NS] [--key NAME] [--since 1h]``: the Events the gateway left on
  ApiKeys (``KeyRead``, ``KeyReadDenied``; aggregated, so one line per key, user,
  version or reason per 10 minutes) that the cluster still holds (Events live about an
  hour by default). Needs ``list`` on Events in the namespace.
* ``secure-keys audit verify FILE``: the gateway's chained audit records in an exported
  log (JSON lines, as a log collector keeps them; other lines are skipped) are checked
  with ``core.auditchain.verify``; the first broken record is named by its line. The
  audit key is derived from the controller's fingerprint key, so verifying takes the
  KMS: ``--kms-config`` (the cluster's, as the gateway has it; the keys Secret is read
  with your kubeconfig) or ``--audit-key-file`` (the key, hex, derived once by whoever
  holds the KMS). Without the key nobody can forge a record, and nobody can check one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from secure_keys.cli import kubeapi
from secure_keys.core.auditchain import derive_audit_key, verify
from secure_keys.core.memory import zero
from secure_keys.kube.client import EVENTS

READ_REASONS = frozenset({"KeyRead", "KeyReadDenied"})
_SINCE = re.compile(r"^([0-9]+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    match = _SINCE.match(text)
    if match is None:
        raise ValueError(f"--since {text[:16]!r}: expected a number and s, m, h or d")
    return datetime.now(UTC) - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _stamp(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def events(args: argparse.Namespace) -> int:
    since = _since(args.since)
    target = kubeapi.load_target(args.kubeconfig)
    namespace = args.namespace or target.namespace
    listed = kubeapi.run_api(target, lambda api: api.list(EVENTS, namespace))
    rows = []
    for event in listed.get("items") or []:
        involved = event.get("involvedObject") or {}
        if involved.get("kind") != "ApiKey" or event.get("reason") not in READ_REASONS:
            continue
        if args.key and involved.get("name") != args.key:
            continue
        stamp = _stamp(event)
        if since is not None and stamp and datetime.fromisoformat(stamp) < since:
            continue
        rows.append((stamp, involved.get("name", ""), event.get("reason", ""), event))
    if not rows:
        print(f"no read Events on ApiKeys in namespace {namespace!r}", file=sys.stderr)
        return 0
    print("LAST SEEN\tAPIKEY\tREASON\tCOUNT\tMESSAGE")
    for stamp, name, reason, event in sorted(rows, key=lambda r: r[0]):
        count = event.get("count") or 1
        print(f"{stamp}\t{name}\t{reason}\t{count}\t{event.get('message', '')}")
    return 0


def _records(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The chained audit records of a log file (as chained) and their line numbers."""
    records, lines = [], []
    with path.open("rb") as log:
        for number, raw in enumerate(log, 1):
            try:
                document = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(document, dict) or "chain" not in document or "mac" not in document:
                continue
            records.append(
                {k: v for k, v in document.items() if k not in {"event", "level", "logger"}}
            )
            lines.append(number)
    return records, lines


def _audit_key(args: argparse.Namespace) -> bytearray:
    if args.audit_key_file is not None:
        text = args.audit_key_file.read_text().strip()
        try:
            return bytearray(bytes.fromhex(text))
        except ValueError:
            raise ValueError(f"{args.audit_key_file}: not a hex key") from None
    if args.kms_config is None:
        raise ValueError("audit verify needs --kms-config or --audit-key-file (the audit key)")
    from secure_keys.core.kms.settings import KmsSettings
    from secure_keys.gateway.broker.material import CachedProviders, KubeSecrets, MaterialSource
    from secure_keys.kube.client import KubeApi

    target = kubeapi.load_target(args.kubeconfig)

    async def open_key() -> bytearray:
        async with KubeApi(target.credentials, user_agent="secure-keys-cli") as api:
            source = MaterialSource(
                KubeSecrets(api),
                CachedProviders(KmsSettings.load(args.kms_config)),
                args.controller_namespace,
            )
            return await source.fingerprint_key()

    import asyncio  # only `audit verify` opens a KMS provider, and those are asyncio

    fingerprint_key = asyncio.run(open_key())
    try:
        return derive_audit_key(fingerprint_key)
    finally:
        zero(fingerprint_key)


def verify_file(args: argparse.Namespace) -> int:
    if args.file is None:
        raise ValueError("audit verify needs the exported log: secure-keys audit verify FILE")
    records, lines = _records(args.file)
    if not records:
        raise ValueError(f"{args.file}: no chained audit record in it")
    key = _audit_key(args)
    try:
        broken = verify(records, key)
    finally:
        zero(key)
    chains = {str(r["chain"]).rpartition(":")[0] for r in records}
    if broken is not None:
        print(
            f"secure-keys: error: {args.file} line {lines[broken.index]} (audit record "
            f"{broken.index + 1} of {len(records)}) does not verify: {broken.why}",
            file=sys.stderr,
        )
        return 1
    print(
        f"{args.file}: {len(records)} audit record(s) in {len(chains)} chain(s), intact",
        file=sys.stderr,
    )
    return 0


def audit(args: argparse.Namespace) -> int:
    if args.action == "verify":
        return verify_file(args)
    return events(args)
