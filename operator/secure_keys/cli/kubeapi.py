"""The CLI's Kubernetes I/O: which cluster and namespace, the recipient, the rotate annotation.

Uses the project's own client (``secure_keys.kube.client``) on its blocking transport
(the standard library's ``http.client``: importing aiohttp would cost every command a
fifth of a second, ``kube/blocking.py``), so the base install needs neither the
``kubernetes`` package nor the controller's dependencies. On that transport the client's
coroutines never wait on anything but the socket, which blocks, so they are run to their
end without an event loop (``_to_completion``): importing asyncio costs a command about
40 ms on these machines, a sixth of a ``get`` (``bench/access.py``). Only a kubeconfig
``exec`` plugin, which runs as an asyncio subprocess, brings in ``asyncio.run``. This
also lets a program call ``KeyManager`` from inside its own event loop (not with an
``exec`` plugin: ``asyncio.run`` cannot nest). The
kubeconfig is found as the controller finds it (the ``--kubeconfig`` path, else the
first of ``$KUBECONFIG``, else in-cluster, else ``~/.kube/config``), and its current
context's namespace is the default for ``-n``.

Errors are turned into three kinds that ``main`` reports without a traceback:
``KubeconfigError`` (fix the configuration, exit 2), ``ApiUnreachable`` (exit 1) and the
client's ``ApiError`` (the API server's answer, exit 1). Messages never quote the
kubeconfig's contents, which hold credentials.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from secure_keys.kube.blocking import TransportError
from secure_keys.kube.client import APIKEYS, CONFIGMAPS, Credentials, KubeApi, load_kubeconfig
from secure_keys.kube.names import RECIPIENT_CONFIGMAP, RECIPIENT_CONFIGMAP_KEY, ROTATE_ANNOTATION

if TYPE_CHECKING:
    from secure_keys.cli.pins import ClusterId

_IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_NAMESPACE = "default"
T = TypeVar("T")


class KubeconfigError(Exception):
    """No usable kubeconfig: the message says which file and what is wrong with it."""


class ApiUnreachable(Exception):
    """The API server could not be reached (connection, TLS or timeout)."""


class RecipientUnpublished(Exception):
    """The recipient ConfigMap exists but does not carry a recipient document."""


@dataclass(frozen=True)
class Target:
    """A cluster to talk to: credentials, and the namespace ``-n`` defaults to."""

    credentials: Credentials
    namespace: str
    source: str
    """Where the credentials came from (a kubeconfig path, or ``in-cluster``)."""


@dataclass(frozen=True)
class FetchedRecipient:
    """The recipient document as the cluster published it, not yet parsed."""

    cluster: ClusterId
    document: str
    namespace: str
    """The kubeconfig context's namespace (the default for ``-n``)."""


def _plugin_errors() -> tuple[type[Exception], ...]:
    """The credential plugin's error class, if its module was loaded: only a kubeconfig
    with an ``exec`` section loads it (``kube.client``), and only then can it be raised."""
    module = sys.modules.get("secure_keys.kube.exec_auth")
    return (module.ExecPluginError,) if module is not None else ()


def _kubeconfig_path(given: Path | None) -> Path | None:
    """The kubeconfig to read, or ``None`` for the in-cluster ServiceAccount."""
    if given is not None:
        return given
    if os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
    if (_IN_CLUSTER / "token").exists() and "KUBERNETES_SERVICE_HOST" in os.environ:
        return None
    return Path.home() / ".kube" / "config"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # A marked error's str() quotes the offending line, which may hold a key or token.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return "not valid YAML"


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = load_kubeconfig(path.read_text())
    except FileNotFoundError:
        raise KubeconfigError(f"kubeconfig {path} does not exist") from None
    except OSError as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path}: {_yaml_problem(exc)}") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"kubeconfig {path}: not a kubeconfig document")
    return document


def context_namespace(document: dict[str, Any]) -> str:
    """The current context's namespace, or ``default``."""
    current = document.get("current-context")
    for entry in document.get("contexts") or []:
        if isinstance(entry, dict) and entry.get("name") == current:
            context = entry.get("context")
            if isinstance(context, dict) and isinstance(context.get("namespace"), str):
                return str(context["namespace"]) or DEFAULT_NAMESPACE
    return DEFAULT_NAMESPACE


def load_target(kubeconfig: Path | None) -> Target:
    """Credentials and default namespace; raises ``KubeconfigError``."""
    path = _kubeconfig_path(kubeconfig)
    if path is None:
        try:
            namespace = (_IN_CLUSTER / "namespace").read_text().strip() or DEFAULT_NAMESPACE
            return Target(Credentials.in_cluster(), namespace, "in-cluster")
        except OSError as exc:
            raise KubeconfigError(f"in-cluster credentials: {exc.strerror or exc}") from None
    document = _read_document(path)
    try:
        credentials = Credentials.from_kubeconfig(path, document=document)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path}: {_yaml_problem(exc)}") from None
    except KeyError as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc.args[0]!r} is not defined") from None
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc}") from None
    except _plugin_errors() as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc}") from None
    return Target(credentials, context_namespace(document), str(path))


def default_namespace(kubeconfig: Path | None) -> str:
    """The namespace ``-n`` defaults to when no cluster is contacted (``--recipient-file``).

    No kubeconfig at all means ``default``; an explicit or damaged one is still an error.
    """
    path = _kubeconfig_path(kubeconfig)
    if path is None:
        try:
            return (_IN_CLUSTER / "namespace").read_text().strip() or DEFAULT_NAMESPACE
        except OSError:
            return DEFAULT_NAMESPACE
    if kubeconfig is None and not path.exists():
        return DEFAULT_NAMESPACE
    return context_namespace(_read_document(path))


def _to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, with no event loop. One that does
    suspend is a programming error here: it is closed (its ``finally`` blocks run) and
    the error raised."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("a blocking-transport request suspended: it needs an event loop")


def _run(target: Target, operation: Callable[[KubeApi], Awaitable[T]]) -> T:
    async def session() -> T:
        try:
            api = KubeApi(
                target.credentials, timeout=30, user_agent="secure-keys-cli", transport="blocking"
            )
            await api.__aenter__()
        except (ssl.SSLError, ValueError) as exc:
            raise KubeconfigError(f"{target.source}: unusable TLS material: {exc}") from None
        try:
            return await operation(api)
        finally:
            await api.__aexit__(None, None, None)

    try:
        if target.credentials.exec is None:
            return _to_completion(session())
        import asyncio  # the plugin runs as an asyncio subprocess

        return asyncio.run(session())
    except _plugin_errors() as exc:
        raise KubeconfigError(f"{target.source}: credential plugin: {exc}") from None
    except (TransportError, TimeoutError) as exc:
        raise ApiUnreachable(
            f"cannot reach the API server at {target.credentials.server}: "
            f"{exc or type(exc).__name__}"
        ) from None


def run_api(target: Target, operation: Callable[[KubeApi], Awaitable[T]]) -> T:
    """Run ``operation`` with a client for ``target``; errors as the module says."""
    return _run(target, operation)


def fetch_recipient(kubeconfig: Path | None, controller_namespace: str) -> FetchedRecipient:
    """Read the recipient ConfigMap; its document is returned unparsed."""
    from secure_keys.cli.pins import ClusterId  # only `seal` pins a recipient

    target = load_target(kubeconfig)
    configmap = _run(
        target, lambda api: api.get(CONFIGMAPS, controller_namespace, RECIPIENT_CONFIGMAP)
    )
    data = configmap.get("data")
    document = data.get(RECIPIENT_CONFIGMAP_KEY) if isinstance(data, dict) else None
    if not isinstance(document, str):
        raise RecipientUnpublished(
            f"ConfigMap {controller_namespace}/{RECIPIENT_CONFIGMAP} has no "
            f"data.{RECIPIENT_CONFIGMAP_KEY}"
        )
    return FetchedRecipient(
        ClusterId(target.credentials.server, controller_namespace), document, target.namespace
    )


def request_rotation(target: Target, namespace: str, name: str, value: str) -> None:
    """Set the rotate annotation of ApiKey ``namespace/name`` to ``value``."""
    patch = {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}}
    _run(target, lambda api: api.patch(APIKEYS, namespace, name, patch))


def call(target: Target, operation: Callable[[KubeApi], Awaitable[T]]) -> T:
    """Run one operation against the cluster, with this module's error handling."""
    return _run(target, operation)
