"""Kubeconfig ``exec`` credential plugins (client.authentication.k8s.io v1 and v1beta1).

A kubeconfig user may name a command (``aws eks get-token``, ``gke-gcloud-auth-plugin``,
``kubelogin``...) that prints an ``ExecCredential`` holding a bearer token or a client
certificate. This module owns running it and reading its answer:

* ``ExecConfig`` is the kubeconfig's ``exec`` section, parsed once into a frozen value.
* ``parse_exec_credential`` turns the plugin's stdout into an ``ExecCredential`` (pure).
* ``ExecAuthenticator`` runs the command (argv, never a shell; stdin closed, since these
  processes are never interactive), caches the credential until its
  ``expirationTimestamp`` and runs the plugin again when asked to (after a 401).

Errors are ``ExecPluginError`` and name the command and, on a non-zero exit, the end of
its stderr. The plugin's stdout (which holds the credential) never reaches an error, a log
or a ``repr``.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, cast

API_VERSIONS = frozenset(
    {"client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"}
)
InteractiveMode = Literal["Never", "IfAvailable", "Always"]
_INTERACTIVE_MODES: frozenset[str] = frozenset({"Never", "IfAvailable", "Always"})
EXPIRY_MARGIN = datetime.timedelta(seconds=10)
"""A cached credential is renewed this long before its expirationTimestamp."""
_STDERR_TAIL = 400


class ExecPluginError(Exception):
    """The exec credential plugin could not be run or gave no usable credential."""


@dataclass(frozen=True)
class ExecConfig:
    """The ``exec`` section of a kubeconfig user, as written there."""

    command: str
    api_version: str
    # Some plugins take secrets in arguments or environment: keep them out of repr().
    args: tuple[str, ...] = field(default=(), repr=False)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    interactive_mode: InteractiveMode = "IfAvailable"
    provide_cluster_info: bool = False
    install_hint: str = ""

    @classmethod
    def from_kubeconfig(cls, section: Mapping[str, Any], base: Path | None = None) -> Self:
        """Parse a kubeconfig ``user.exec``; ``base`` is the kubeconfig's directory.

        As client-go does, a relative command that contains a path separator is taken
        relative to the kubeconfig's directory; a bare name is looked up on $PATH.
        """
        command = section.get("command")
        if not isinstance(command, str) or not command:
            raise ExecPluginError("kubeconfig exec: 'command' is required")
        api_version = str(section.get("apiVersion") or "")
        if api_version not in API_VERSIONS:
            raise ExecPluginError(
                f"kubeconfig exec {command!r}: apiVersion {api_version!r} is not one of "
                f"{sorted(API_VERSIONS)}"
            )
        mode = section.get("interactiveMode")
        if mode is None:
            if api_version.endswith("/v1"):
                raise ExecPluginError(
                    f"kubeconfig exec {command!r}: interactiveMode is required in {api_version}"
                )
            mode = "IfAvailable"
        if mode not in _INTERACTIVE_MODES:
            raise ExecPluginError(f"kubeconfig exec {command!r}: unknown interactiveMode {mode!r}")
        if os.sep in command and not os.path.isabs(command) and base is not None:
            command = str(base / command)
        env = tuple((str(item["name"]), str(item["value"])) for item in section.get("env") or [])
        return cls(
            command=command,
            api_version=api_version,
            args=tuple(str(a) for a in section.get("args") or []),
            env=env,
            interactive_mode=cast(InteractiveMode, mode),
            provide_cluster_info=bool(section.get("provideClusterInfo", False)),
            install_hint=str(section.get("installHint") or ""),
        )


@dataclass(frozen=True)
class ExecCredential:
    """What a plugin returned. ``repr`` names the kind of credential, not its value."""

    token: str | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    expires_at: datetime.datetime | None = None

    def fresh(self, now: datetime.datetime) -> bool:
        return self.expires_at is None or now < self.expires_at - EXPIRY_MARGIN


def exec_info(config: ExecConfig, server: str | None, ca_pem: bytes | None) -> dict[str, Any]:
    """The ``KUBERNETES_EXEC_INFO`` document handed to the plugin (pure)."""
    spec: dict[str, Any] = {"interactive": False}
    if config.provide_cluster_info and server is not None:
        cluster: dict[str, Any] = {"server": server}
        if ca_pem is not None:
            cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
        spec["cluster"] = cluster
    return {"apiVersion": config.api_version, "kind": "ExecCredential", "spec": spec}


def parse_exec_credential(config: ExecConfig, stdout: bytes) -> ExecCredential:
    """Read the plugin's output. Errors name the command and what is wrong, never values."""
    where = f"exec credential plugin {config.command!r}"
    try:
        document = json.loads(stdout)
    except ValueError:
        raise ExecPluginError(f"{where} did not print a JSON ExecCredential") from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise ExecPluginError(f"{where} did not print an ExecCredential")
    if document.get("apiVersion") != config.api_version:
        raise ExecPluginError(
            f"{where} answered apiVersion {document.get('apiVersion')!r}, "
            f"the kubeconfig asks for {config.api_version!r}"
        )
    status = document.get("status")
    if not isinstance(status, dict):
        raise ExecPluginError(f"{where}: the ExecCredential has no status")
    token = status.get("token") or None
    cert = status.get("clientCertificateData") or None
    key = status.get("clientKeyData") or None
    if (cert is None) != (key is None):
        raise ExecPluginError(
            f"{where}: clientCertificateData and clientKeyData must be given together"
        )
    if token is None and cert is None:
        raise ExecPluginError(
            f"{where}: the ExecCredential holds neither a token nor a certificate"
        )
    expires_at = None
    stamp = status.get("expirationTimestamp")
    if stamp:
        try:
            expires_at = datetime.datetime.fromisoformat(str(stamp))
        except ValueError:
            raise ExecPluginError(f"{where}: expirationTimestamp is not RFC 3339") from None
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=datetime.UTC)
    return ExecCredential(
        token=str(token) if token is not None else None,
        cert_pem=str(cert).encode() if cert is not None else None,
        key_pem=str(key).encode() if key is not None else None,
        expires_at=expires_at,
    )


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ExecAuthenticator:
    """Runs one plugin on demand and caches its credential; safe for concurrent callers."""

    def __init__(
        self,
        config: ExecConfig,
        *,
        server: str | None = None,
        ca_pem: bytes | None = None,
        timeout: float = 60.0,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.config = config
        self._server = server
        self._ca_pem = ca_pem
        self._timeout = timeout
        self._clock = clock
        self._cached: ExecCredential | None = None
        import asyncio  # here, not at the top: a CLI command without a plugin never needs it

        self._lock = asyncio.Lock()
        self.runs = 0
        """How many times the plugin ran (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"ExecAuthenticator(command={self.config.command!r})"

    async def credential(self, *, rejected: ExecCredential | None = None) -> ExecCredential:
        """The cached credential while fresh; else a new one from the plugin.

        ``rejected`` is a credential the API server refused (401): it is not handed out
        again. A burst of 401s on the same credential runs the plugin once.
        """
        async with self._lock:
            cached = self._cached
            if cached is not None and cached is not rejected and cached.fresh(self._clock()):
                return cached
            self._cached = await self._run()
            return self._cached

    def invalidate(self) -> None:
        self._cached = None

    async def _run(self) -> ExecCredential:
        import asyncio

        config = self.config
        if config.interactive_mode == "Always":
            raise ExecPluginError(
                f"exec credential plugin {config.command!r} needs interactiveMode Always, "
                "and this process has no terminal to give it"
            )
        executable = shutil.which(config.command) if os.sep not in config.command else None
        path = executable or config.command
        env = dict(os.environ)
        env.update(dict(config.env))
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            exec_info(config, self._server, self._ca_pem), separators=(",", ":")
        )
        try:
            process = await asyncio.create_subprocess_exec(
                path,
                *config.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            hint = f" ({config.install_hint.strip()})" if config.install_hint else ""
            raise ExecPluginError(
                f"exec credential plugin {config.command!r} could not be started: "
                f"{exc.strerror or exc}{hint}"
            ) from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), self._timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ExecPluginError(
                f"exec credential plugin {config.command!r} did not answer within "
                f"{self._timeout:g} s"
            ) from None
        self.runs += 1
        if process.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
            raise ExecPluginError(
                f"exec credential plugin {config.command!r} exited with status "
                f"{process.returncode}" + (f": {tail}" if tail else "")
            )
        return parse_exec_credential(config, stdout)
