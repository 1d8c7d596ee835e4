"""Owns ``secure_keys.KeyManager``: the original design's library interface, on any store.

::

    from secure_keys import KeyManager

    km = KeyManager()                          # in a pod: its injected files; else the cluster
    km.authenticate(mfa_token="123456")        # cluster: only for requireMFA keys
    with km.key("github-api-key") as value:    # a bytearray, zeroed when the block ends
        client = make_client(value.decode())

Stores:

* ``"pod"``: the files the sidecar writes (``$SECUREKEYS_DIR``, else
  ``/var/run/secrets/securekeys``). Each read opens the key's ``.meta.json`` and file
  afresh, so a rotation (the sidecar swaps the directory atomically) is followed without
  asking; a key whose lease has run out is refused (the sidecar removes it soon after).
* ``"cluster"``: the kubeconfig's identity (``kubeconfig``, else ``$KUBECONFIG``, else
  in-cluster, else ``~/.kube/config``), reading through KeyAccessReviews exactly as
  ``secure-keys get`` does (``cli/access.py``). ``authenticate(mfa_token=...)`` logs in
  and keeps the access token **in memory only** (not in the CLI's cache).
* ``"local"``: the developer's local store (``store/manager.py``), as before.
* ``"auto"`` (the default): ``pod`` when the injected directory holds a key, else
  ``cluster``.

Where the design's example cannot run as written: key names are Kubernetes names
(DNS-1123: lowercase, digits, ``-`` and ``.``), so ``"github_api_key"`` is
``"github-api-key"``; and ``authenticate`` takes no password for the cluster (the
kubeconfig's credentials are the first factor). docs/memory.md says what zeroing the
buffer can and cannot promise in Python.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from secure_keys.core import sidecarenv
from secure_keys.core.memory import zero
from secure_keys.store.errors import StoreError
from secure_keys.store.local import Password

StoreKind = Literal["auto", "pod", "cluster", "local"]
__all__ = ["KeyManager", "KeyUnavailable", "StoreKind"]

_META = ".meta.json"


class KeyUnavailable(StoreError):
    """The key cannot be read here now (absent, lease over, refused by the cluster)."""


def _pod_dir() -> Path:
    return Path(os.environ.get(sidecarenv.DIR) or sidecarenv.KEYS_DIR)


def _has_injected_keys(directory: Path) -> bool:
    try:
        return any(directory.glob("*" + _META))
    except OSError:
        return False


def _unquote_env(line: bytes) -> bytearray:
    """The value of one ``NAME=value`` line as ``core.keyformat`` writes it."""
    _, _, value = line.rstrip(b"\n").partition(b"=")
    if value[:1] == b"'" and value[-1:] == b"'":
        return bytearray(value[1:-1].replace(b"'\\''", b"'"))
    return bytearray(value)


class _PodKeys:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _meta(self, name: str) -> dict[str, Any]:
        for path in sorted(self.directory.glob("*" + _META)):
            try:
                document = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(document, dict) and document.get("apiKey") == name:
                document["fileName"] = path.name[: -len(_META)]
                return document
        raise KeyUnavailable(f"no key {name!r} in {self.directory} (is it in the pod's keys?)")

    def get(self, name: str, *, previous: bool) -> bytearray:
        meta = self._meta(name)
        now = datetime.now(UTC)
        lease = meta.get("leaseExpiresAt")
        if not isinstance(lease, str) or datetime.fromisoformat(lease) <= now:
            raise KeyUnavailable(f"the lease of key {name!r} is over")
        file_name = str(meta["fileName"]) + (".previous" if previous else "")
        if previous:
            ends = meta.get("previousExpiresAt")
            if not isinstance(ends, str) or datetime.fromisoformat(ends) <= now:
                raise KeyUnavailable(f"key {name!r} has no previous version in its grace period")
        raw = bytearray((self.directory / file_name).read_bytes())
        fmt = meta.get("format", "raw")
        if fmt == "raw":
            return raw
        try:
            if fmt == "env":
                return _unquote_env(bytes(raw))
            value = json.loads(raw)["value"]
            return bytearray(str(value).encode())
        finally:
            zero(raw)

    def names(self) -> list[str]:
        found = []
        for path in sorted(self.directory.glob("*" + _META)):
            try:
                found.append(str(json.loads(path.read_bytes())["apiKey"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found


class KeyManager:
    """Keys from one store, after ``authenticate``. ``close`` (or ``with``) when done."""

    def __init__(
        self,
        store: StoreKind = "auto",
        *,
        path: Path | None = None,
        kubeconfig: str | Path | None = None,
        namespace: str | None = None,
        controller_namespace: str = "secure-keys-system",
    ) -> None:
        if store not in ("auto", "pod", "cluster", "local"):
            raise ValueError(f"unknown store {str(store)[:32]!r} (auto, pod, cluster or local)")
        if store == "auto":
            store = "pod" if _has_injected_keys(_pod_dir()) else "cluster"
        self.store: StoreKind = store
        self._local: Any = None
        self._pod = _PodKeys(path or _pod_dir()) if store == "pod" else None
        self._kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        self._namespace = namespace
        self._controller_namespace = controller_namespace
        self._target: Any = None
        self._token: Any = None
        if store == "local":
            from secure_keys.store.manager import KeyManager as LocalKeyManager

            self._local = LocalKeyManager("local", path=path)

    # -- the cluster ---------------------------------------------------------------------
    def _cluster(self) -> tuple[Any, str]:
        from secure_keys.cli import kubeapi

        if self._target is None:
            self._target = kubeapi.load_target(self._kubeconfig)
        return self._target, self._namespace or self._target.namespace

    def authenticate(
        self,
        password: Password | None = None,
        mfa_token: str | None = None,
        *,
        kubeconfig: str | Path | None = None,
        namespace: str | None = None,
    ) -> None:
        """local: open the store (password, TOTP code). cluster: use this kubeconfig and
        namespace and, with ``mfa_token``, log in (the token is held in memory). pod:
        nothing to do (the pod's ServiceAccount is the identity)."""
        if self._local is not None:
            self._local.authenticate(password=password, mfa_token=mfa_token)
            return
        if self.store != "cluster":
            return
        if password is not None:
            raise StoreError("the cluster needs no password: the kubeconfig is the identity")
        if kubeconfig is not None:
            self._kubeconfig, self._target = Path(kubeconfig), None
        if namespace is not None:
            self._namespace = namespace
        if mfa_token is not None:
            from secure_keys.cli.login import login_in_memory

            target, ns = self._cluster()
            self._token = login_in_memory(
                target, ns, self._controller_namespace, bytearray(mfa_token.strip().encode())
            )

    def get_key(
        self, name: str, *, previous: bool = False, version: int | None = None
    ) -> bytearray:
        """The key's value in a fresh ``bytearray``; zero it when done (or use ``key``)."""
        if self._local is not None:
            if version is not None:
                raise StoreError("the local store reads the current or previous version")
            value: bytearray = self._local.get_key(name, previous=previous)
            return value
        if self._pod is not None:
            if version is not None:
                raise StoreError("a pod holds the current and previous versions only")
            return self._pod.get(name, previous=previous)
        from secure_keys.cli.access import AccessRefused, read_key

        target, ns = self._cluster()
        try:
            read = read_key(
                target,
                ns,
                name,
                version=version,
                previous=previous,
                client="secure-keys-python/KeyManager",
                token=self._token,
            )
        except AccessRefused as exc:
            raise KeyUnavailable(str(exc)) from None
        return read.plaintext

    @contextmanager
    def key(self, name: str, *, previous: bool = False) -> Iterator[bytearray]:
        """The key's value for a ``with`` block, zeroed when the block ends."""
        value = self.get_key(name, previous=previous)
        try:
            yield value
        finally:
            zero(value)

    def list_keys(self) -> list[Any]:
        """local: ``KeyInfo`` records; pod: key names; cluster: ``ListedKey`` records."""
        if self._local is not None:
            listed: list[Any] = self._local.list_keys()
            return listed
        if self._pod is not None:
            return list(self._pod.names())
        from secure_keys.cli.access import review
        from secure_keys.core import accessreview as wire

        target, ns = self._cluster()
        answer = review(target, ns, wire.ReviewSpec("list", client="secure-keys-python/list"))
        return list(answer.keys)

    def add_key(self, name: str, value: bytes | bytearray) -> int:
        return int(self._local_only().add_key(name, value))

    def rotate_key(self, name: str, value: bytes | bytearray) -> int:
        return int(self._local_only().rotate_key(name, value))

    def remove_key(self, name: str) -> list[int]:
        return list(self._local_only().remove_key(name))

    def _local_only(self) -> Any:
        if self._local is None:
            raise StoreError(
                "adding, rotating and removing keys here is for the local store; on the "
                "cluster, apply ApiKeys and use `secure-keys rotate`"
            )
        return self._local

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        self._token = None

    def __enter__(self) -> KeyManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
