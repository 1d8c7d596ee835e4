"""deploy/controller-rbac.yaml, asked of the real API server's RBAC authorizer.

The file is read here and installed under fresh names (its ``system:authenticated``
subject replaced by a fresh group, so the grant can be told apart from what every user
already has), then bound to a fresh user exactly as the controller is bound. Then:

- every request the controller makes (from ``self.api.*`` / ``api.*`` in
  ``operator/secure_keys/controller/`` and kopf's watches) must be allowed (MUST);
- a table of dangerous requests must be refused (MUST NOT);
- the rules the user actually holds (a SelfSubjectRulesReview as that user, minus what a
  user with no grant holds) must stay within a reviewed ceiling, so a rule added to the
  file (a wildcard, a new resource, a new verb) fails even if no table row names it.

Removing a needed rule fails the MUST test; adding a dangerous one fails MUST NOT or the
ceiling. These are SubjectAccessReviews, not the controller running: the other e2e tests
run the controller under the same file and catch a rule it needs at run time.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from secure_keys_dev.stack import CONTROLLER_NAMESPACE, REPO, ensure_namespace, eventually

RBAC_FILE = REPO / "deploy" / "controller-rbac.yaml"
APP = "team-payments"  # any namespace holding ApiKeys (need not exist for a review)
CTRL = CONTROLLER_NAMESPACE
RECIPIENT = "secure-keys-recipient"


@dataclass(frozen=True)
class Ask:
    """One request: ``verb`` on ``resource`` (``name[.group][/subresource]``), in
    ``namespace`` ("" = cluster-wide or cluster-scoped), optionally one object by ``name``."""

    verb: str
    resource: str
    namespace: str = ""
    name: str = ""

    def attributes(self) -> client.V1ResourceAttributes:
        resource, _, subresource = self.resource.partition("/")
        plural, _, group = resource.partition(".")
        return client.V1ResourceAttributes(
            verb=self.verb,
            group=group,
            resource=plural,
            subresource=subresource or None,
            namespace=self.namespace or None,
            name=self.name or None,
        )


def _each(verbs: str, resource: str, namespace: str = "", name: str = "") -> list[Ask]:
    return [Ask(verb, resource, namespace, name) for verb in verbs.split()]


# What the controller does, from its code. kopf lists and watches ApiKeys, KeyRoles and its
# managed Secrets cluster-wide (or namespaces, with --namespaces globs) and discovers CRDs.
MUST = [
    *_each("get list watch patch", "apikeys.securekeys.io", APP),  # read, finalizer
    *_each("list watch", "apikeys.securekeys.io"),
    *_each("patch", "apikeys.securekeys.io/status", APP),
    *_each("get list watch", "keyroles.securekeys.io", APP),
    *_each("list watch", "keyroles.securekeys.io"),
    *_each("patch", "keyroles.securekeys.io/status", APP),
    # Blob Secrets (create, write, erase, delete) and secretRef sources (read, delete).
    *_each("get list watch create patch delete", "secrets", APP),
    *_each("list watch", "secrets"),
    *_each("get create", "secrets", CTRL, "secure-keys-controller-keys"),
    *_each("create", "events", APP),
    *_each("get list watch", "customresourcedefinitions.apiextensions.k8s.io"),
    *_each("list watch", "namespaces"),
    *_each("get create patch", "configmaps", CTRL, RECIPIENT),
    *_each("list watch", "configmaps", CTRL),  # its informer restores a lost recipient
    *_each("get create update", "leases.coordination.k8s.io", CTRL, "secure-keys-controller"),
]

MUST_NOT = [
    # ApiKeys and KeyRoles are created, changed and deleted by people, not the controller.
    *_each("create update delete deletecollection", "apikeys.securekeys.io", APP),
    *_each("create update patch delete", "keyroles.securekeys.io", APP),
    *_each("deletecollection update", "secrets", APP),
    # Its ConfigMaps and Lease live in its namespace only: not the kube-system ones.
    *_each("get list watch patch update", "configmaps", APP),
    *_each("get patch update", "configmaps", "kube-system"),
    *_each("get update create", "leases.coordination.k8s.io", "kube-system"),
    *_each("update patch delete list", "events", APP),  # no editing the audit trail
    # Nothing that runs code or mints credentials.
    *_each("create", "pods", APP),
    *_each("create get", "pods/exec", APP),
    *_each("create", "pods/attach", APP),
    *_each("patch update", "pods/ephemeralcontainers", APP),
    *_each("create", "deployments.apps", APP),
    *_each("create", "daemonsets.apps", APP),
    *_each("create", "jobs.batch", APP),
    *_each("create", "cronjobs.batch", APP),
    *_each("create", "serviceaccounts/token", APP, "default"),
    *_each("create", "serviceaccounts", APP),
    *_each("get list", "nodes"),
    *_each("get create", "nodes/proxy"),
    *_each("impersonate", "users"),
    *_each("impersonate", "groups"),
    *_each("impersonate", "serviceaccounts", APP),
    *_each("create", "certificatesigningrequests.certificates.k8s.io"),
    *_each("update", "certificatesigningrequests.certificates.k8s.io/approval"),
    *_each(
        "approve sign", "signers.certificates.k8s.io", "", "kubernetes.io/kube-apiserver-client"
    ),
    # No widening its own rights.
    *_each("escalate bind create update", "roles.rbac.authorization.k8s.io", APP),
    *_each("escalate bind create update", "clusterroles.rbac.authorization.k8s.io"),
    *_each("create update", "rolebindings.rbac.authorization.k8s.io", APP),
    *_each("create update", "clusterrolebindings.rbac.authorization.k8s.io"),
    *_each("create update patch delete", "customresourcedefinitions.apiextensions.k8s.io"),
    *[
        ask
        for kind in (
            "validatingwebhookconfigurations",
            "mutatingwebhookconfigurations",
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
        )
        for ask in _each("create update patch delete", f"{kind}.admissionregistration.k8s.io")
    ],
    *_each("create delete patch", "namespaces"),
    *_each("update", "namespaces/finalize"),
]

# The most the file may grant, as (verb, apiGroup, resource, resourceName): the rules a
# SelfSubjectRulesReview reports must stay within this. Some are granted but unused by the
# code today (get on the status subresources, get on namespaces); they are allowed here,
# so removing them passes, but nothing beyond them may be added.
CEILING_EVERYWHERE = {
    *((v, "securekeys.io", "apikeys", "") for v in ("get", "list", "watch", "patch")),
    *((v, "securekeys.io", "keyroles", "") for v in ("get", "list", "watch")),
    *(
        (v, "securekeys.io", r, "")
        for v in ("get", "patch")
        for r in ("apikeys/status", "keyroles/status")
    ),
    *((v, "", "secrets", "") for v in ("get", "list", "watch", "create", "patch", "delete")),
    ("create", "", "events", ""),
    *(
        (v, "apiextensions.k8s.io", "customresourcedefinitions", "")
        for v in ("get", "list", "watch")
    ),
    *((v, "", "namespaces", "") for v in ("get", "list", "watch")),
}
CEILING_IN_CTRL = {
    *CEILING_EVERYWHERE,
    *((v, "", "configmaps", "") for v in ("get", "list", "watch", "create", "patch")),
    *((v, "coordination.k8s.io", "leases", "") for v in ("get", "create", "update")),
}

Rule = tuple[str, str, str, str]


@dataclass(frozen=True)
class Installed:
    user: str  # bound to the controller's ClusterRole and Role, as the controller is
    group: str  # stands for system:authenticated in the file's bindings


def _renamed(document: dict[str, Any], suffix: str, group: str) -> dict[str, Any]:
    """The file's object under a fresh name, so this test sees exactly the file."""
    out = copy.deepcopy(document)
    out["metadata"]["name"] += suffix
    if "roleRef" in out:
        out["roleRef"]["name"] += suffix
        for subject in out.get("subjects") or []:
            if subject == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "system:authenticated",
            }:
                subject["name"] = group
    return out


def _binding(kind: str, name: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": {"name": name, **({"namespace": CTRL} if kind == "Role" else {})},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def _allowed(admin: client.ApiClient, installed: Installed, ask: Ask, *, user: str = "") -> bool:
    review = client.AuthorizationV1Api(admin).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user or installed.user,
                groups=[installed.group, "system:authenticated"],
                resource_attributes=ask.attributes(),
            )
        )
    )
    return bool(review.status.allowed)


@pytest.fixture
def installed(admin_api: client.ApiClient) -> Iterator[Installed]:
    suffix = f"-e2e-{secrets.token_hex(3)}"
    found = Installed(user=f"controller{suffix}", group=f"authenticated{suffix}")
    ensure_namespace(admin_api, CTRL)
    documents = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    objects = [_renamed(d, suffix, found.group) for d in documents]
    name = f"secure-keys-controller{suffix}"
    objects += [_binding("ClusterRole", name, found.user), _binding("Role", name, found.user)]
    for obj in objects:
        utils.create_from_dict(admin_api, obj)
    yield found
    rbac = client.RbacAuthorizationV1Api(admin_api)
    deletes: dict[str, Callable[..., Any]] = {
        "ClusterRole": rbac.delete_cluster_role,
        "ClusterRoleBinding": rbac.delete_cluster_role_binding,
        "Role": lambda n: rbac.delete_namespaced_role(n, CTRL),
        "RoleBinding": lambda n: rbac.delete_namespaced_role_binding(n, CTRL),
    }
    for obj in objects:
        deletes[obj["kind"]](obj["metadata"]["name"])


def _wait_for_grants(admin: client.ApiClient, installed: Installed) -> None:
    """RBAC takes effect when the authorizer's informers see it: wait for every MUST, so
    that a MUST NOT cannot pass merely because a grant has not arrived yet."""

    deadline = time.monotonic() + 30
    while missing := [ask for ask in MUST if not _allowed(admin, installed, ask)]:
        assert time.monotonic() < deadline, f"the file does not grant: {missing}"
        time.sleep(0.2)


def test_the_controller_may_make_every_request_its_code_makes(
    admin_api: client.ApiClient, installed: Installed
) -> None:
    _wait_for_grants(admin_api, installed)
    bystander = f"bystander-{installed.user}"
    # The same requests from a user without the controller's bindings are refused (but
    # reading the recipient, which everyone may), so the grants come from the file's
    # controller roles, not from the cluster's defaults.
    also = [a for a in MUST if _allowed(admin_api, installed, a, user=bystander)]
    assert also == [Ask("get", "configmaps", CTRL, RECIPIENT)]


def test_the_controller_may_not_make_dangerous_requests(
    admin_api: client.ApiClient, installed: Installed
) -> None:
    _wait_for_grants(admin_api, installed)
    granted = [ask for ask in MUST_NOT if _allowed(admin_api, installed, ask)]
    assert granted == []


def test_any_authenticated_user_may_read_only_the_recipient_configmap(
    admin_api: client.ApiClient, installed: Installed
) -> None:
    bystander = f"bystander-{installed.user}"
    recipient = Ask("get", "configmaps", CTRL, RECIPIENT)
    eventually(lambda: _allowed(admin_api, installed, recipient, user=bystander), 30)
    for ask in [
        Ask("list", "configmaps", CTRL),
        Ask("get", "configmaps", CTRL, "other"),
        Ask("patch", "configmaps", CTRL, RECIPIENT),
        Ask("get", "secrets", CTRL, "secure-keys-controller-keys"),
    ]:
        assert not _allowed(admin_api, installed, ask, user=bystander), ask


def _rules(api: client.ApiClient, namespace: str) -> tuple[set[Rule], set[tuple[str, str]]]:
    """Every (verb, group, resource, name) and (verb, URL) the caller holds in namespace."""
    review = client.AuthorizationV1Api(api).create_self_subject_rules_review(
        client.V1SelfSubjectRulesReview(
            spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace)
        )
    )
    assert not review.status.incomplete, review.status.evaluation_error
    resources = {
        (verb, group, resource, name)
        for rule in review.status.resource_rules
        for verb in rule.verbs
        for group in rule.api_groups or [""]
        for resource in rule.resources or [""]
        for name in rule.resource_names or [""]
    }
    urls = {
        (verb, url)
        for rule in review.status.non_resource_rules
        for verb in rule.verbs
        for url in rule.non_resource_urls or []
    }
    return resources, urls


@pytest.mark.parametrize(
    ("namespace", "ceiling"), [(APP, CEILING_EVERYWHERE), (CTRL, CEILING_IN_CTRL)]
)
def test_the_file_grants_nothing_beyond_the_reviewed_ceiling(
    admin_api: client.ApiClient,
    user_api: Callable[..., client.ApiClient],
    installed: Installed,
    namespace: str,
    ceiling: set[Rule],
) -> None:
    _wait_for_grants(admin_api, installed)
    controller = user_api(installed.user, (installed.group,))
    nobody = user_api(f"nobody-{installed.user}")
    held, held_urls = _rules(controller, namespace)
    baseline, baseline_urls = _rules(nobody, namespace)

    extra = {
        rule for rule in held - baseline if rule not in ceiling and (*rule[:3], "") not in ceiling
    }
    assert extra == set()
    assert held_urls - baseline_urls == set()
    # And the review does see the grant (so an empty difference means something).
    assert ("patch", "", "secrets", "") in held - baseline
