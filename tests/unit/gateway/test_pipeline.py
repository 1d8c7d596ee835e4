"""The admission pipeline, table-driven: name, request, expected denial or expected patch.

Injected cases compare the patch with a golden file under ``tests/data/gateway/`` (set
SECUREKEYS_UPDATE_GOLDEN=1 to rewrite them after a deliberate change, then review the
diff) and apply it to the pod, checking the result. Denied cases check each message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from secure_keys.gateway.webhook.injection import GatewaySettings, quantity
from secure_keys.gateway.webhook.mutate import admit
from secure_keys.gateway.webhook.review import decode
from tests.unit.gateway.helpers import (
    NS,
    Table,
    apply_patch,
    body,
    bound_table,
    key,
    pod,
    review,
    role,
)

GOLDEN = Path(__file__).parents[2] / "data" / "gateway"
SETTINGS = GatewaySettings()
TEST_CA = "-----BEGIN CERTIFICATE-----\nTUlJQnRlc3RDQQ==\n-----END CERTIFICATE-----\n"
BROKER = GatewaySettings(broker_url="https://127.0.0.1:8443", broker_ca_pem=TEST_CA)
"""A gateway that runs the key broker: its URL and serving CA go into every pod."""


@dataclass
class Case:
    name: str
    pod: dict[str, Any]
    table: Table = field(default_factory=bound_table)
    namespace: str = NS
    operation: str = "CREATE"
    kind: str = "Pod"
    synced: bool = True
    outcome: str = "injected"
    messages: tuple[str, ...] = ()
    """Substrings the denial message must contain (denied cases)."""
    code: int = 0
    warning: str = ""
    settings: GatewaySettings = SETTINGS


def run(case: Case) -> Any:
    request = decode(
        body(review(case.pod, namespace=case.namespace, operation=case.operation, kind=case.kind))
    )
    return admit(request, case.table, case.settings, synced=case.synced)


INJECTED = [
    Case("native-default", pod()),
    Case(
        "native-existing-init-volumes-mounts",
        pod(
            init_containers=[{"name": "migrate", "image": "x"}],
            volumes=[{"name": "data", "emptyDir": {}}],
            containers=[
                {
                    "name": "app",
                    "image": "x",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
        ),
    ),
    Case(
        "native-init-last",
        pod(
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/init-first": "false"},
            init_containers=[{"name": "mesh-init", "image": "x"}],
        ),
    ),
    Case(
        "classic",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live,billing",
                "securekeys.io/mode": "classic",
            }
        ),
    ),
    Case(
        "init-only",
        pod(annotations={"securekeys.io/keys": "billing", "securekeys.io/mode": "init-only"}),
    ),
    Case(
        "named-containers",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/containers": "app, migrate",
            },
            containers=[{"name": "app", "image": "x"}, {"name": "metrics", "image": "x"}],
            init_containers=[{"name": "migrate", "image": "x", "volumeMounts": []}],
        ),
    ),
    Case(
        "custom-path-size-resources",
        pod(
            annotations={
                "securekeys.io/keys": " stripe-live , billing ",
                "securekeys.io/mount-path": "/etc/keys",
                "securekeys.io/volume-size": "256Ki",
                "securekeys.io/sidecar-cpu-request": "5m",
                "securekeys.io/sidecar-cpu-limit": "1",
                "securekeys.io/sidecar-memory-request": "16Mi",
                "securekeys.io/sidecar-memory-limit": "128Mi",
            },
            security_context={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
        ),
    ),
    Case(
        "broker-ca-and-reload-url",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "http://127.0.0.1:8080/-/reload",
            }
        ),
        settings=BROKER,
    ),
    Case(
        "granted-by-selector-and-group",
        pod(annotations={"securekeys.io/keys": "stripe-live"}),
        table=Table(
            keys={NS: [key("stripe-live", tier="live")]},
            roles=[
                role(
                    "live-keys",
                    subjects=[{"kind": "Group", "name": f"system:serviceaccounts:{NS}"}],
                    selector={"matchLabels": {"tier": "live"}},
                )
            ],
        ),
    ),
]


@pytest.mark.parametrize("case", INJECTED, ids=lambda c: c.name)
def test_injected_patch_matches_golden(case: Case) -> None:
    outcome = run(case)
    assert outcome.outcome == "injected", outcome.response.message
    patch = list(outcome.response.patch)
    golden = GOLDEN / f"{case.name}.json"
    if os.environ.get("SECUREKEYS_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(patch, indent=2, sort_keys=True) + "\n")
    assert patch == json.loads(golden.read_text())
    # The patch applies to the pod it was built for, and only adds.
    patched = apply_patch(case.pod, patch)
    assert patched["metadata"]["annotations"]["securekeys.io/injected"] in (
        "native",
        "classic",
        "init-only",
    )
    for container in case.pod["spec"]["containers"]:
        assert container in patched["spec"]["containers"] or container["name"] in {
            c["name"] for c in patched["spec"]["containers"]
        }


def _containers(patched: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {c["name"]: c for c in patched["spec"].get("initContainers", [])},
        {c["name"]: c for c in patched["spec"]["containers"]},
    )


def test_native_sidecar_shape() -> None:
    case = INJECTED[0]
    patched = apply_patch(case.pod, list(run(case).response.patch))
    init, regular = _containers(patched)
    sidecar = init["securekeys-sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["secure-keys-sidecar"]
    assert sidecar["image"] == "secure-keys:dev"
    probe = sidecar["startupProbe"]["exec"]["command"]
    assert probe[-1] == "/var/run/secrets/securekeys/stripe-live"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"cpu": "250m", "memory": "64Mi"},
    }
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes["securekeys-keys"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    token = volumes["securekeys-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": "securekeys.io", "expirationSeconds": 600, "path": "token"}
    assert regular["app"]["volumeMounts"] == [
        {"name": "securekeys-keys", "mountPath": "/var/run/secrets/securekeys", "readOnly": True}
    ]
    # The token is for the key container only.
    assert all(m["name"] != "securekeys-token" for m in regular["app"]["volumeMounts"])


def test_probe_checks_every_delivery_file_name() -> None:
    case = INJECTED[3]  # classic: stripe-live and billing (fileName billing.env)
    patched = apply_patch(case.pod, list(run(case).response.patch))
    init, regular = _containers(patched)
    assert "restartPolicy" not in init["securekeys-init"]
    assert init["securekeys-init"]["args"] == ["--once"]
    assert regular["securekeys-sidecar"]["args"] == []
    env = {e["name"]: e.get("value") for e in init["securekeys-init"]["env"]}
    assert env["SECUREKEYS_FILES"] == "stripe-live,billing.env"
    native = Case("native-two", pod(annotations={"securekeys.io/keys": "stripe-live,billing"}))
    patched = apply_patch(native.pod, list(run(native).response.patch))
    command = _containers(patched)[0]["securekeys-sidecar"]["startupProbe"]["exec"]["command"]
    assert command[-2:] == [
        "/var/run/secrets/securekeys/stripe-live",
        "/var/run/secrets/securekeys/billing.env",
    ]


def test_init_first_puts_key_container_before_the_pods_own_and_shifts_mounts() -> None:
    case = INJECTED[5]  # named-containers: init container "migrate" named
    patched = apply_patch(case.pod, list(run(case).response.patch))
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["securekeys-sidecar", "migrate"]
    init, regular = _containers(patched)
    assert init["migrate"]["volumeMounts"][0]["name"] == "securekeys-keys"
    assert "volumeMounts" not in regular["metrics"]
    last = INJECTED[2]
    patched = apply_patch(last.pod, list(run(last).response.patch))
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [
        "mesh-init",
        "securekeys-sidecar",
    ]


def test_sidecar_runs_as_the_pods_user() -> None:
    case = INJECTED[6]
    patched = apply_patch(case.pod, list(run(case).response.patch))
    security = _containers(patched)[0]["securekeys-sidecar"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 3000)
    assert patched["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/etc/keys"


DENIED = [
    Case(
        "reload-url-off-loopback",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "http://10.0.0.5:8080/reload",
            }
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: 'http://10.0.0.5:8080/reload' must be an http:// URL",),
    ),
    Case(
        "reload-url-https",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "https://127.0.0.1:8443/reload",
            }
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: 'https://127.0.0.1:8443/reload' must be an http:// URL",),
    ),
    Case(
        "reload-url-userinfo",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "http://evil.example@127.0.0.1/reload",
            }
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: 'http://evil.example@127.0.0.1/reload' must be an http:// URL",),
    ),
    Case(
        "reload-url-lookalike-host",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "http://127.0.0.1.evil.example/reload",
            }
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: 'http://127.0.0.1.evil.example/reload' must be an http:// URL",),
    ),
    Case(
        "reload-url-bad-port",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/reload-url": "http://127.0.0.1:99999/reload",
            }
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: 'http://127.0.0.1:99999/reload' must be an http:// URL",),
    ),
    Case(
        "reload-url-relative",
        pod(
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/reload-url": "/reload"}
        ),
        outcome="denied",
        code=400,
        messages=("reload-url: '/reload' must be an http:// URL",),
    ),
    Case(
        "no-keys",
        pod(annotations={}),
        outcome="denied",
        code=400,
        messages=("annotation securekeys.io/keys must name at least one ApiKey",),
    ),
    Case(
        "bad-key-name",
        pod(annotations={"securekeys.io/keys": "Stripe_Live"}),
        outcome="denied",
        code=400,
        messages=("'Stripe_Live' is not a valid ApiKey name",),
    ),
    Case(
        "duplicate-key",
        pod(annotations={"securekeys.io/keys": "a,b,a"}),
        outcome="denied",
        code=400,
        messages=("names 'a' more than once",),
    ),
    Case(
        "bad-mode",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/mode": "sidecar"}),
        outcome="denied",
        code=400,
        messages=("'sidecar' is not one of native, classic, init-only",),
    ),
    Case(
        "bad-mount-path",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/mount-path": "/etc/../keys",
            }
        ),
        outcome="denied",
        code=400,
        messages=("securekeys.io/mount-path: '/etc/../keys'",),
    ),
    Case(
        "relative-mount-path",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/mount-path": "keys"}),
        outcome="denied",
        code=400,
        messages=("securekeys.io/mount-path: 'keys'",),
    ),
    Case(
        "volume-too-big",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/volume-size": "1Gi"}),
        outcome="denied",
        code=400,
        messages=("at most 64Mi",),
    ),
    Case(
        "bad-init-first",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/init-first": "yes"}),
        outcome="denied",
        code=400,
        messages=("'yes' is not true or false",),
    ),
    Case(
        "bad-cpu",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/sidecar-cpu-limit": "lots",
            }
        ),
        outcome="denied",
        code=400,
        messages=("'lots' is not a cpu quantity",),
    ),
    Case(
        "request-over-limit",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/sidecar-memory-request": "100Mi",
            }
        ),
        outcome="denied",
        code=400,
        messages=("memory request 100Mi exceeds its limit 64Mi",),
    ),
    Case(
        "unknown-annotation",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/key": "x"}),
        outcome="denied",
        code=400,
        messages=("unknown annotation 'securekeys.io/key'",),
    ),
    Case(
        "missing-container",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/containers": "web"}),
        outcome="denied",
        code=400,
        messages=("the pod has no container web",),
    ),
    Case(
        "init-container-before-keys",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/containers": "migrate",
                "securekeys.io/init-first": "false",
            },
            init_containers=[{"name": "migrate", "image": "x"}],
        ),
        outcome="denied",
        code=400,
        messages=("names init container migrate",),
    ),
    Case(
        "reserved-volume",
        pod(volumes=[{"name": "securekeys-keys", "emptyDir": {}}]),
        outcome="denied",
        code=400,
        messages=("volume name(s) securekeys-keys are reserved",),
    ),
    Case(
        "mount-path-taken",
        pod(
            containers=[
                {
                    "name": "app",
                    "image": "x",
                    "volumeMounts": [{"name": "d", "mountPath": "/var/run/secrets/securekeys"}],
                }
            ]
        ),
        outcome="denied",
        code=400,
        messages=("container 'app' already mounts something at /var/run/secrets/securekeys",),
    ),
    Case(
        "no-containers",
        pod(containers=[]),
        outcome="denied",
        code=400,
        messages=("the pod has no containers",),
    ),
    Case(
        "unknown-key",
        pod(annotations={"securekeys.io/keys": "stripe-live,nope"}),
        outcome="denied",
        code=403,
        messages=('no ApiKey "nope" in namespace "payments"',),
    ),
    Case(
        "deleting-key",
        pod(),
        table=Table(
            keys={NS: [key("stripe-live", deleting=True)]}, roles=[role("r", names=["stripe-live"])]
        ),
        outcome="denied",
        code=403,
        messages=('ApiKey "stripe-live" in namespace "payments" is being deleted',),
    ),
    Case(
        "unbound-service-account",
        pod(service_account="other"),
        table=Table(
            keys={NS: [key("stripe-live")]},
            roles=[role("r", names=["stripe-live"])],
            accounts={(NS, "other")},
        ),
        outcome="denied",
        code=403,
        messages=(
            'ServiceAccount "other" may not read ApiKey "stripe-live"',
            'create a KeyRole in namespace "payments" with subjects '
            "[{kind: ServiceAccount, name: other}], "
            "keys.names [stripe-live] and permissions [read]",
        ),
    ),
    Case(
        "keyrole-in-other-namespace",
        pod(),
        table=Table(
            keys={NS: [key("stripe-live")], "other": [key("stripe-live")]},
            roles=[
                role(
                    "r",
                    names=["stripe-live"],
                    namespace="other",
                    subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": NS}],
                )
            ],
        ),
        outcome="denied",
        code=403,
        messages=('ServiceAccount "app" may not read ApiKey "stripe-live"',),
    ),
    Case(
        "keyrole-without-read",
        pod(),
        table=Table(
            keys={NS: [key("stripe-live")]},
            roles=[role("r", names=["stripe-live"], permissions=["list", "rotate"])],
        ),
        outcome="denied",
        code=403,
        messages=('KeyRole "r" covers "stripe-live" but grants only list, rotate',),
    ),
    Case(
        "keyrole-being-deleted",
        pod(),
        table=Table(
            keys={NS: [key("stripe-live")]}, roles=[role("r", names=["stripe-live"], deleting=True)]
        ),
        outcome="denied",
        code=403,
        messages=('may not read ApiKey "stripe-live"',),
    ),
    Case(
        "one-of-two-refused",
        pod(annotations={"securekeys.io/keys": "stripe-live,billing"}),
        table=Table(
            keys={NS: [key("stripe-live"), key("billing")]},
            roles=[role("r", names=["stripe-live"])],
        ),
        outcome="denied",
        code=403,
        messages=('may not read ApiKey "billing":', "keys.names [billing]"),
    ),
    Case(
        "service-account-missing",
        pod(service_account="ghost"),
        outcome="denied",
        code=403,
        messages=('ServiceAccount "ghost" does not exist in "payments"',),
    ),
    Case(
        "not-synced",
        pod(),
        synced=False,
        outcome="denied",
        code=503,
        messages=("caches are not synced yet",),
    ),
    Case(
        "malformed-pod",
        {"metadata": {"labels": {"securekeys.io/inject": "true"}}, "spec": {"containers": "x"}},
        outcome="denied",
        code=400,
        messages=("spec.containers is not a list",),
    ),
    Case(
        "already-injected-but-unbound",
        pod(
            annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/injected": "native"},
            service_account="other",
        ),
        table=Table(keys={NS: [key("stripe-live")]}, accounts={(NS, "other")}),
        outcome="denied",
        code=403,
        messages=('ServiceAccount "other" may not read',),
    ),
]


@pytest.mark.parametrize("case", DENIED, ids=lambda c: c.name)
def test_denied_with_message(case: Case) -> None:
    outcome = run(case)
    response = outcome.response
    assert outcome.outcome == "denied"
    assert response.allowed is False
    assert not response.patch
    assert response.code == case.code
    assert response.message.startswith("secure-keys: ")
    for message in case.messages:
        assert message in response.message


UNCHANGED = [
    Case("not-opted-in", pod(labels={}), outcome="skipped"),
    Case("opt-in-false", pod(labels={"securekeys.io/inject": "false"}), outcome="skipped"),
    Case(
        "kube-system",
        pod(),
        namespace="kube-system",
        outcome="skipped",
        warning="pods in namespace kube-system are never injected",
    ),
    Case(
        "own-namespace",
        pod(),
        namespace="secure-keys-system",
        outcome="skipped",
        warning="pods in namespace secure-keys-system are never injected",
    ),
    Case("update", pod(), operation="UPDATE", outcome="ignored"),
    Case("not-a-pod", pod(), kind="ConfigMap", outcome="ignored"),
    Case(
        "already-injected",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/injected": "native"}),
        outcome="unchanged",
    ),
    Case(
        "unlabelled-with-bad-annotations",
        pod(labels={}, annotations={"securekeys.io/keys": "!!"}),
        outcome="skipped",
    ),
]


@pytest.mark.parametrize("case", UNCHANGED, ids=lambda c: c.name)
def test_returned_unchanged(case: Case) -> None:
    outcome = run(case)
    assert outcome.outcome == case.outcome
    assert outcome.response.allowed is True
    assert outcome.response.patch == ()
    if case.warning:
        assert any(case.warning in w for w in outcome.response.warnings)
    else:
        assert outcome.response.warnings == ()


def test_golden_files_are_all_used() -> None:
    # A golden file without a case would be a test that silently stopped running.
    assert {p.stem for p in GOLDEN.glob("*.json")} == {c.name for c in INJECTED}


def test_default_resources_are_valid_quantities_within_their_limits() -> None:
    # parse() takes the defaults without checking them again (the fast path).
    defaults = GatewaySettings().resources
    for unit in ("cpu", "memory"):
        request = quantity(getattr(defaults, f"{unit}_request"))
        limit = quantity(getattr(defaults, f"{unit}_limit"))
        assert request is not None
        assert limit is not None
        assert 0 < request <= limit


def test_broker_ca_reaches_the_key_container_as_a_file() -> None:
    case = next(c for c in INJECTED if c.name == "broker-ca-and-reload-url")
    patched = apply_patch(case.pod, list(run(case).response.patch))
    init, _ = _containers(patched)
    sidecar = init["securekeys-sidecar"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["SECUREKEYS_GATEWAY_URL"] == "https://127.0.0.1:8443"
    assert env["SECUREKEYS_RELOAD_URL"] == "http://127.0.0.1:8080/-/reload"
    assert env["SECUREKEYS_CA_FILE"] == "/var/run/secrets/securekeys.io/ca/ca.crt"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["securekeys-ca"] == {
        "name": "securekeys-ca",
        "mountPath": "/var/run/secrets/securekeys.io/ca",
        "readOnly": True,
    }
    # The file is the annotation, through the downward API: no per-namespace object.
    assert patched["metadata"]["annotations"]["securekeys.io/gateway-ca"] == TEST_CA
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    item = volumes["securekeys-ca"]["downwardAPI"]["items"][0]
    assert item["path"] == "ca.crt"
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['securekeys.io/gateway-ca']"
    # Only the key container sees it.
    assert all(
        m["name"] != "securekeys-ca"
        for c in patched["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    )


def test_gateway_ca_written_by_the_author_is_replaced() -> None:
    case = Case(
        "forged-ca",
        pod(
            annotations={
                "securekeys.io/keys": "stripe-live",
                "securekeys.io/gateway-ca": "-----BEGIN CERTIFICATE-----\nforged\n",
            }
        ),
        settings=BROKER,
    )
    outcome = run(case)
    assert outcome.outcome == "injected"
    patched = apply_patch(case.pod, list(outcome.response.patch))
    assert patched["metadata"]["annotations"]["securekeys.io/gateway-ca"] == TEST_CA


def test_without_a_broker_ca_no_ca_is_injected() -> None:
    patched = apply_patch(INJECTED[0].pod, list(run(INJECTED[0]).response.patch))
    init, _ = _containers(patched)
    names = {e["name"] for e in init["securekeys-sidecar"]["env"]}
    assert "SECUREKEYS_CA_FILE" not in names
    assert "SECUREKEYS_RELOAD_URL" not in names
    assert "securekeys-ca" not in {v["name"] for v in patched["spec"]["volumes"]}
    assert "securekeys.io/gateway-ca" not in patched["metadata"]["annotations"]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/reload", "http://localhost/x?y=1", "http://[::1]:9000/"],
)
def test_loopback_reload_urls_are_accepted(url: str) -> None:
    case = Case(
        "ok",
        pod(annotations={"securekeys.io/keys": "stripe-live", "securekeys.io/reload-url": url}),
    )
    outcome = run(case)
    assert outcome.outcome == "injected", outcome.response.message
    patched = apply_patch(case.pod, list(outcome.response.patch))
    init, _ = _containers(patched)
    env = {e["name"]: e.get("value") for e in init["securekeys-sidecar"]["env"]}
    assert env["SECUREKEYS_RELOAD_URL"] == url


def test_broker_flags_are_required_together(tmp_path: Path) -> None:
    from secure_keys.gateway.__main__ import parse_options

    base = ["--tls-cert", "c", "--tls-key", "k", "--kms-config", str(tmp_path / "kms.json")]
    with pytest.raises(SystemExit):
        parse_options(base)
    with pytest.raises(SystemExit):
        parse_options([*base, "--broker-url", "http://127.0.0.1:8443"])
    (tmp_path / "ca.crt").write_text(TEST_CA)
    options = parse_options(
        [
            *base,
            "--broker-url",
            "https://127.0.0.1:8443",
            "--broker-ca-file",
            str(tmp_path / "ca.crt"),
        ]
    )
    assert options.settings.broker_url == "https://127.0.0.1:8443"
    assert options.settings.broker_ca_pem == TEST_CA
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(SystemExit):
        parse_options(
            [*base, "--broker-url", "https://x:1", "--broker-ca-file", str(tmp_path / "junk")]
        )
