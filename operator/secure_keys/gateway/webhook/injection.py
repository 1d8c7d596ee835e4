"""Should this pod be injected, and how: annotations parsed once into a frozen config. Pure.

``should_inject`` decides from the label and the namespace alone. ``parse`` turns the
pod's ``securekeys.io/`` annotations into an ``InjectionConfig`` or raises
``InvalidAnnotations`` listing every problem at once; ``validate`` then checks the
config against the pod itself (containers that exist, paths and names that are free).
The gateway-wide defaults are ``GatewaySettings``, set by the process's flags.

Two caches of pure functions serve the pods that need a fresh answer (a Deployment's
first pod, say): ``parse`` keeps the last 256 configs it built, keyed by the
``securekeys.io/`` annotations and the two settings it reads, and ``quantity`` its last
256 numbers. Both keep only short texts (a hostile pod's long annotation is parsed every
time and never stays in memory), only immutable values, and never a refusal.
"""

from __future__ import annotations

import functools
import heapq
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal
from urllib.parse import urlsplit

from secure_keys.core import sidecarenv
from secure_keys.gateway.webhook.pod import ContainerView, PodView
from secure_keys.kube import annotations as ann

Mode = Literal["native", "classic", "init-only"]
MODES: tuple[Mode, ...] = ("native", "classic", "init-only")

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
DEFAULT_MOUNT_PATH = sidecarenv.KEYS_DIR
"""Where app containers see the keys unless the pod says otherwise."""
SIDECAR_KEYS_PATH = sidecarenv.KEYS_DIR
"""Where the key container writes them (fixed: the pod's choice does not move it)."""
TOKEN_MOUNT_PATH = sidecarenv.TOKEN_DIR
TOKEN_AUDIENCE = "securekeys.io"  # noqa: S105 - an audience
TOKEN_EXPIRATION_SECONDS = 600
"""The kubelet's minimum; it refreshes the token at 80 % of its life."""

CA_MOUNT_PATH = sidecarenv.CA_DIR
CA_FILE_NAME = sidecarenv.CA_FILE_NAME
"""The gateway's serving CA in the key container (the sidecar's default CA file)."""

KEYS_VOLUME = sidecarenv.KEYS_VOLUME
TOKEN_VOLUME = sidecarenv.TOKEN_VOLUME
CA_VOLUME = sidecarenv.CA_VOLUME
SIDECAR_CONTAINER = "securekeys-sidecar"
INIT_CONTAINER = "securekeys-init"
RESERVED_VOLUMES = sidecarenv.RESERVED_VOLUMES
RESERVED_CONTAINERS = frozenset({SIDECAR_CONTAINER, INIT_CONTAINER})

MAX_KEYS = ann.MAX_KEYS
MAX_RELOAD_URL = 256
RELOAD_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Where a reload URL may point: the pod's own loopback, nothing else."""
MAX_VOLUME_SIZE = Decimal(64 * 1024 * 1024)
DEFAULT_VOLUME_SIZE = "1Mi"
"""The keys volume's size limit unless the pod says otherwise (valid: test_pipeline checks)."""
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|Ki|Mi|Gi)?$")
_FACTORS = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(1000),
    "M": Decimal(1000**2),
    "G": Decimal(1000**3),
    "Ki": Decimal(1024),
    "Mi": Decimal(1024**2),
    "Gi": Decimal(1024**3),
}


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "10m"
    memory_request: str = "32Mi"
    cpu_limit: str = "250m"
    memory_limit: str = "64Mi"


@dataclass(frozen=True)
class GatewaySettings:
    """Gateway-wide choices, from the process's flags; pods cannot change these."""

    sidecar_image: str = "secure-keys:dev"
    sidecar_command: tuple[str, ...] = ("secure-keys-sidecar",)
    image_pull_policy: str = "IfNotPresent"
    default_mode: Mode = "native"
    own_namespace: str = "secure-keys-system"
    skip_namespaces: frozenset[str] = SYSTEM_NAMESPACES
    broker_url: str = ""
    """The key broker's URL as the key container reaches it (``SECUREKEYS_GATEWAY_URL``)."""
    broker_ca_pem: str = ""
    """The PEM of the CA that signed the gateway's serving certificate (public); when set,
    injected pods get it as the key container's CA file. Empty: the system trust store."""
    resources: Resources = field(default_factory=Resources)
    default_uid: int = 65532
    """The sidecar's UID when the pod sets no non-root runAsUser of its own."""


@dataclass(frozen=True)
class InjectionConfig:
    """What one pod asked for, after parsing; every field has its final value."""

    keys: tuple[str, ...]
    mode: Mode
    containers: tuple[str, ...] | None
    """None: every regular container."""
    mount_path: str
    volume_size: str
    init_first: bool
    resources: Resources
    reload_url: str | None = None
    """The app's loopback URL the sidecar POSTs after a rotation (None: not called)."""
    all_containers_read: bool = False
    """``securekeys.io/all-containers-may-read-keys: "true"``: the pod accepts that any of
    its containers may read its keys (needed with ``shareProcessNamespace``)."""


class InvalidAnnotations(ValueError):
    """The pod's annotations cannot be honoured; ``problems`` says each reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Skip:
    """The pod is returned unchanged; ``warning`` (if any) is shown to the client."""

    reason: str
    warning: str = ""


def should_inject(pod: PodView, settings: GatewaySettings) -> Skip | None:
    """None if the pod opts in and may be injected, else why it is left alone."""
    if pod.labels.get(ann.INJECT_LABEL) != "true":
        return Skip("not-opted-in")
    if pod.namespace in settings.skip_namespaces or pod.namespace == settings.own_namespace:
        return Skip(
            "excluded-namespace",
            f"{ann.INJECT_LABEL}: pods in namespace {pod.namespace} are never injected",
        )
    return None


_CACHED_TEXT = 64
"""The longest text ``quantity`` keeps in its cache: a hostile pod's long value must not
stay in memory after its review (real quantities are far shorter)."""


def quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity (the forms a sidecar needs) as a number, or None."""
    return _cached_quantity(text) if len(text) <= _CACHED_TEXT else _quantity(text)


_LONGEST_QUANTITY = 256
"""Longer texts are not quantities a sidecar needs (and a long run of digits must not
reach ``Decimal`` and ``int``, whose conversions are not linear)."""


def _quantity(text: str) -> Decimal | None:
    if len(text) > _LONGEST_QUANTITY:
        return None
    match = _QUANTITY.match(text)
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _FACTORS[match.group(2)]
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        return None


_cached_quantity = functools.lru_cache(maxsize=256)(_quantity)
"""``_quantity`` of short texts, cached (a pure function; Decimals are immutable)."""


def _valid_volume_size(text: str) -> bool:
    size = quantity(text)
    return size is not None and 0 < size <= MAX_VOLUME_SIZE and size == int(size)


QUOTED = 48
"""The most characters of a pod's own text that a refusal quotes (``quote``)."""


def quote(text: str) -> str:
    """``text`` for a refusal or a log line: whole when short, else its first ``QUOTED``
    characters and its length, so hostile input is never echoed whole."""
    if len(text) <= QUOTED:
        return repr(text)
    return f"{text[:QUOTED]!r}... ({len(text)} characters)"


def _list_text(key: str, text: str, most: int, longest: int, problems: list[str]) -> bool:
    """Whether a comma-separated annotation is short enough to read item by item: at most
    ``most`` items of ``longest`` characters each, with some room for blanks. Checked
    before splitting, so a hostile value costs one length check and one count."""
    limit = most * (longest + 8)
    if len(text) > limit:
        problems.append(f"annotation {key} is {len(text)} characters long; at most {limit}")
        return False
    count = text.count(",") + 1
    if count > most * 2:  # blanks between commas are dropped; anything more is too many
        problems.append(f"annotation {key} has {count} items; at most {most}")
        return False
    return True


def _parse_keys(text: str | None, problems: list[str]) -> tuple[str, ...]:
    if text is not None and not _list_text(ann.KEYS, text, MAX_KEYS, ann.MAX_NAME, problems):
        return ()
    keys = ann.split_names(text) if text is not None else []
    if not keys:
        problems.append(f"annotation {ann.KEYS} must name at least one ApiKey (a,b,...)")
        return ()
    if len(keys) > MAX_KEYS:
        problems.append(f"annotation {ann.KEYS} names {len(keys)} keys; at most {MAX_KEYS}")
        return ()
    invalid = [key for key in keys if len(key) > 253 or not _NAME.match(key)]
    for key in invalid[:_MOST_QUOTED]:
        problems.append(f"annotation {ann.KEYS}: {quote(key)} is not a valid ApiKey name")
    seen: set[str] = set()
    duplicates: set[str] = set()
    for key in keys:
        (duplicates if key in seen else seen).add(key)
    if duplicates:
        named = ", ".join(quote(k) for k in heapq.nsmallest(_MOST_QUOTED, duplicates))
        problems.append(f"annotation {ann.KEYS} names {named} more than once")
    return tuple(keys)


_MOST_QUOTED = 4
"""The most items of one annotation a refusal names one by one."""
MAX_CONTAINERS = 64
"""The most names ``securekeys.io/containers`` may list."""


def _parse_containers(text: str, problems: list[str]) -> tuple[str, ...]:
    if not _list_text(ann.CONTAINERS, text, MAX_CONTAINERS, 63, problems):
        return ()
    containers = tuple(ann.split_names(text))
    if not containers:
        problems.append(f"annotation {ann.CONTAINERS} must name at least one container")
    elif len(containers) > MAX_CONTAINERS:
        problems.append(
            f"annotation {ann.CONTAINERS} names {len(containers)} containers; "
            f"at most {MAX_CONTAINERS}"
        )
        return ()
    invalid = [name for name in containers if len(name) > 63 or not _LABEL.match(name)]
    for name in invalid[:_MOST_QUOTED]:
        problems.append(f"annotation {ann.CONTAINERS}: {quote(name)} is not a container name")
    return containers


SYSTEM_DIRECTORIES = frozenset(
    {
        "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media",
        "/mnt", "/opt", "/root", "/run", "/sbin", "/srv", "/tmp", "/usr", "/var",  # noqa: S108
        "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local",
        "/usr/local/bin", "/usr/share", "/var/lib", "/var/log", "/var/run", "/var/tmp",  # noqa: S108
    }
)  # fmt: skip
"""Directories an image's own files live in: mounting the keys there hides them all."""
KERNEL_FILESYSTEMS = ("/proc", "/sys", "/dev")
"""Kernel interfaces the runtime mounts: no path at or under them is accepted."""
KUBELET_MOUNTS = (
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
)
"""What the kubelet mounts into containers: a mount at or above one of these hides it."""


def mount_path_problem(path: str) -> str | None:
    """Why the keys may not be mounted at ``path`` (normalised, absolute), or None."""
    if path == "/":
        return "/ would hide the container's whole filesystem"
    for kernel in KERNEL_FILESYSTEMS:
        if path == kernel or path.startswith(kernel + "/"):
            return f"{path} is at or under {kernel}, which the container runtime mounts"
    for mounted in KUBELET_MOUNTS:
        if mounted == path or mounted.startswith(path + "/"):
            return f"{path} would hide {mounted}, which the kubelet mounts"
    if path in SYSTEM_DIRECTORIES:
        return f"{path} would hide the image's own files there"
    return None


def _parse_mount_path(text: str | None, problems: list[str]) -> str:
    if text is None:
        return DEFAULT_MOUNT_PATH
    if len(text) > 256:
        problems.append(f"annotation {ann.MOUNT_PATH}: {quote(text)} is longer than 256 characters")
        return DEFAULT_MOUNT_PATH
    normal = posixpath.normpath(text) if text.startswith("/") else ""
    if normal != text or text == "/" or ":" in text or normal.startswith("//"):
        problems.append(
            f"annotation {ann.MOUNT_PATH}: {quote(text)} must be a normalised absolute path "
            "other than / (no '..', no trailing '/', no ':'), at most 256 characters"
        )
        return DEFAULT_MOUNT_PATH
    problem = mount_path_problem(text)
    if problem is not None:
        problems.append(f"annotation {ann.MOUNT_PATH}: {problem}; choose a directory of its own")
        return DEFAULT_MOUNT_PATH
    return text


def _parse_reload_url(text: str | None, problems: list[str]) -> str | None:
    if text is None:
        return None
    try:
        if len(text) > MAX_RELOAD_URL:
            raise ValueError("too long")  # never parsed: refused below
        url = urlsplit(text)
        url.port  # noqa: B018 - raises ValueError on a bad or out-of-range port
        valid = (
            url.scheme == "http"
            and url.hostname in RELOAD_HOSTS
            and url.username is None
            and url.password is None
            and not url.fragment
            and len(text) <= MAX_RELOAD_URL
            and all(ch.isprintable() and not ch.isspace() for ch in text)
        )
    except ValueError:
        valid = False
    if not valid:
        problems.append(
            f"annotation {ann.RELOAD_URL}: {quote(text)} must be an http:// URL on 127.0.0.1, "
            "localhost or [::1] (the pod's own loopback), such as "
            f"http://127.0.0.1:8080/reload, at most {MAX_RELOAD_URL} characters"
        )
        return None
    return text


def _parse_resources(
    annotations: Mapping[str, str], default: Resources, problems: list[str]
) -> Resources:
    if annotations.keys().isdisjoint(_RESOURCE_ANNOTATIONS):
        return default  # the defaults are valid: test_pipeline checks them
    values: dict[str, str] = {}
    for key, attribute, unit in (
        (ann.SIDECAR_CPU_REQUEST, "cpu_request", "cpu"),
        (ann.SIDECAR_CPU_LIMIT, "cpu_limit", "cpu"),
        (ann.SIDECAR_MEMORY_REQUEST, "memory_request", "memory"),
        (ann.SIDECAR_MEMORY_LIMIT, "memory_limit", "memory"),
    ):
        text = annotations.get(key)
        if text is None:
            values[attribute] = getattr(default, attribute)
            continue
        amount = quantity(text)
        if amount is None or amount <= 0 or (unit == "memory" and amount != int(amount)):
            example = "100m or 0.5" if unit == "cpu" else "64Mi"
            problems.append(
                f"annotation {key}: {quote(text)} is not a {unit} quantity like {example}"
            )
            values[attribute] = getattr(default, attribute)
        else:
            values[attribute] = text
    resources = Resources(**values)
    for unit in ("cpu", "memory"):
        request = quantity(getattr(resources, f"{unit}_request"))
        limit = quantity(getattr(resources, f"{unit}_limit"))
        if request is not None and limit is not None and request > limit:
            problems.append(
                f"the sidecar's {unit} request {getattr(resources, f'{unit}_request')} exceeds "
                f"its limit {getattr(resources, f'{unit}_limit')}: raise "
                f"securekeys.io/sidecar-{unit}-limit too"
            )
    return resources


_RESOURCE_ANNOTATIONS = (
    ann.SIDECAR_CPU_REQUEST,
    ann.SIDECAR_CPU_LIMIT,
    ann.SIDECAR_MEMORY_REQUEST,
    ann.SIDECAR_MEMORY_LIMIT,
)


MAX_OUR_ANNOTATIONS = 2 * len(ann.POD_ANNOTATIONS)
"""More ``securekeys.io/`` annotations than this are refused at once, unread."""
_PARSE_CACHE_TEXT = 1024
"""The most ``securekeys.io/`` annotation text whose parse is cached (see ``parse``)."""


def parse(annotations: Mapping[str, str], settings: GatewaySettings) -> InjectionConfig:
    """The pod's injection config, or ``InvalidAnnotations`` naming every problem.

    Only the ``securekeys.io/`` annotations and two settings are read, so the config of
    the pods of many Deployments is parsed once: ``_cached_parse`` keeps the last 256
    configs (frozen, so answers may share them) for at most ``_PARSE_CACHE_TEXT``
    characters of such annotations each. A refusal is never kept (an exception is not
    cached); each raises afresh with its own message.
    """
    mine = [item for item in annotations.items() if item[0].startswith(ann.PREFIX)]
    if len(mine) > MAX_OUR_ANNOTATIONS:  # before any per-annotation work
        raise InvalidAnnotations(
            [
                f"the pod has {len(mine)} {ann.PREFIX} annotations; at most "
                f"{MAX_OUR_ANNOTATIONS} (see docs/gateway.md for the known ones)"
            ]
        )
    ours = frozenset(mine)
    if sum([len(key) + len(value) for key, value in ours]) <= _PARSE_CACHE_TEXT:
        return _cached_parse(ours, settings.default_mode, settings.resources)
    return _parse(ours, settings.default_mode, settings.resources)


def _parse(
    items: frozenset[tuple[str, str]], default_mode: Mode, default_resources: Resources
) -> InjectionConfig:
    """``parse`` of the pod's ``securekeys.io/`` annotations (``items``). Pure."""
    annotations = dict(items)
    problems: list[str] = []
    unknown = [key for key in annotations if key not in ann.POD_ANNOTATIONS]
    for key in heapq.nsmallest(_MOST_QUOTED, unknown):
        problems.append(f"unknown annotation {quote(key)} (see docs/gateway.md for the known ones)")
    if len(unknown) > _MOST_QUOTED:
        problems.append(f"{len(unknown)} unknown {ann.PREFIX} annotations in all")
    keys = _parse_keys(annotations.get(ann.KEYS), problems)

    mode_text = annotations.get(ann.MODE)
    mode: Mode = default_mode
    if mode_text is not None:
        if mode_text in MODES:
            mode = mode_text
        else:
            problems.append(
                f"annotation {ann.MODE}: {quote(mode_text)} is not one of {', '.join(MODES)}"
            )

    containers: tuple[str, ...] | None = None
    containers_text = annotations.get(ann.CONTAINERS)
    if containers_text is not None:
        containers = _parse_containers(containers_text, problems)

    mount_path = _parse_mount_path(annotations.get(ann.MOUNT_PATH), problems)

    volume_size = annotations.get(ann.VOLUME_SIZE)
    if volume_size is None:
        volume_size = DEFAULT_VOLUME_SIZE  # valid: test_pipeline checks it
    elif not _valid_volume_size(volume_size):
        problems.append(
            f"annotation {ann.VOLUME_SIZE}: {quote(volume_size)} must be a size such as 1Mi, "
            "more than 0 and at most 64Mi (the volume is memory)"
        )
        volume_size = DEFAULT_VOLUME_SIZE

    init_first = True
    init_first_text = annotations.get(ann.INIT_FIRST)
    if init_first_text is not None:
        if init_first_text not in ("true", "false"):
            problems.append(
                f"annotation {ann.INIT_FIRST}: {quote(init_first_text)} is not true or false"
            )
        init_first = init_first_text != "false"

    resources = _parse_resources(annotations, default_resources, problems)
    reload_url = _parse_reload_url(annotations.get(ann.RELOAD_URL), problems)
    shared_text = annotations.get(ann.SHARED_PROCESSES)
    if shared_text is not None and shared_text not in ("true", "false"):
        problems.append(
            f"annotation {ann.SHARED_PROCESSES}: {quote(shared_text)} is not true or false"
        )
    if problems:
        raise InvalidAnnotations(problems)
    return InjectionConfig(
        keys=keys,
        mode=mode,
        containers=containers,
        mount_path=mount_path,
        volume_size=volume_size,
        init_first=init_first,
        resources=resources,
        reload_url=reload_url,
        all_containers_read=shared_text == "true",
    )


_cached_parse = functools.lru_cache(maxsize=256)(_parse)


def isolation_problems(config: InjectionConfig, pod: PodView) -> list[str]:
    """What in the pod lets a container it did not name read the keys or the key
    container's token. Checked for every pod, injected already or not."""
    if pod.share_process_namespace and not config.all_containers_read:
        return [
            "the pod sets shareProcessNamespace: true, so any of its containers could read "
            "the keys and the key container's token through /proc/<pid>/root, whatever "
            f'{ann.CONTAINERS} names; set {ann.SHARED_PROCESSES}: "true" to accept that '
            "every container of the pod may read its keys, or drop shareProcessNamespace"
        ]
    return []


def validate(config: InjectionConfig, pod: PodView) -> list[str]:
    """What in the pod itself keeps the config from being applied (empty: nothing)."""
    problems: list[str] = []
    if not pod.containers:
        problems.append("the pod has no containers")
    regular = {c.name for c in pod.containers}
    init = {c.name for c in pod.init_containers}
    taken = RESERVED_CONTAINERS & (regular | init)
    if taken:
        problems.append(
            f"container name(s) {', '.join(sorted(taken))} are reserved for secure-keys"
        )
    if not RESERVED_VOLUMES.isdisjoint(pod.volume_names):
        volumes = RESERVED_VOLUMES & pod.volume_names
        problems.append(f"volume name(s) {', '.join(sorted(volumes))} are reserved for secure-keys")
    for name in config.containers or ():
        if name in init:
            if not config.init_first:
                problems.append(
                    f"annotation {ann.CONTAINERS} names init container {name}, which runs "
                    f"before the keys exist when {ann.INIT_FIRST} is false"
                )
        elif name not in regular:
            problems.append(f"annotation {ann.CONTAINERS}: the pod has no container {name}")

    for _field, _index, container in targets(config, pod):
        if config.mount_path in container.mount_paths:
            problems.append(
                f"container {quote(container.name)} already mounts something at "
                f"{config.mount_path}: "
                f"set {ann.MOUNT_PATH} to another path"
            )
    return problems


PodContainer = tuple[Literal["containers", "initContainers"], int, ContainerView]
"""A container that gets the keys: the pod's list it is in, its index there, its view.
A plain tuple: ``targets`` runs twice for every injected pod."""


def targets(config: InjectionConfig, pod: PodView) -> list[PodContainer]:
    """The containers that get the keys mounted, with where they are in the pod."""
    if config.containers is None:
        return [("containers", index, container) for index, container in enumerate(pod.containers)]
    wanted = set(config.containers)
    chosen: list[PodContainer] = [
        ("containers", index, container)
        for index, container in enumerate(pod.containers)
        if container.name in wanted
    ]
    chosen.extend(
        ("initContainers", index, container)
        for index, container in enumerate(pod.init_containers)
        if container.name in wanted
    )
    return chosen
