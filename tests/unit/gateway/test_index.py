"""The KeyRole index of the gateway's cache finds exactly the roles a scan would.

Property: after any sequence of added, modified and deleted KeyRoles (subjects of every
kind, in several namespaces), ``GatewayCaches.keyroles_naming(ns, sa)`` equals the roles
of ``ns`` that have a subject for which ``binds_service_account`` holds: the index is a
shortcut, never a different answer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from secure_keys.gateway.webhook.caches import GatewayCaches
from secure_keys.kube.informer import InformerEvent
from secure_keys.kube.keyroles import binds_service_account

NAMESPACES = ["a", "b"]
ACCOUNTS = ["app", "batch"]

subjects = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("ServiceAccount"), "name": st.sampled_from(ACCOUNTS)},
        optional={"namespace": st.sampled_from(NAMESPACES)},
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("User"),
            "name": st.sampled_from(
                [f"system:serviceaccount:{n}:{a}" for n in NAMESPACES for a in ACCOUNTS]
                + ["alice", "system:serviceaccount:a", "system:serviceaccount:a:app:x"]
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "kind": st.just("Group"),
            "name": st.sampled_from(
                [
                    "system:serviceaccounts",
                    "system:serviceaccounts:a",
                    "system:authenticated",
                    "system:serviceaccounts:b",
                    "devs",
                ]
            ),
        }
    ),
)
events = st.lists(
    st.tuples(
        st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
        st.sampled_from(NAMESPACES),
        st.sampled_from(["r1", "r2", "r3"]),
        st.lists(subjects, min_size=1, max_size=3),
    ),
    max_size=12,
)


def _role(namespace: str, name: str, subject_list: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"subjects": subject_list, "keys": {"names": ["k"]}},
    }


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(events)
def test_index_agrees_with_a_scan(history: list[tuple[str, str, str, list[Any]]]) -> None:
    caches = GatewayCaches()
    for kind, namespace, name, subject_list in history:
        caches.keyroles.apply(InformerEvent(kind, _role(namespace, name, subject_list)))  # type: ignore[arg-type]
    for namespace in NAMESPACES:
        roles = caches.keyroles.in_namespace(namespace)
        for account in ACCOUNTS:
            expected = {
                name
                for name, role in roles.items()
                if any(
                    binds_service_account(s, namespace, namespace, account)
                    for s in role.rules.subjects
                )
            }
            found = {r.name for r in caches.keyroles_naming(namespace, account)}
            assert found == expected, (namespace, account)


def test_index_forgets_a_subject_removed_by_an_update() -> None:
    caches = GatewayCaches()
    subject = {"kind": "ServiceAccount", "name": "app"}
    caches.keyroles.apply(InformerEvent("ADDED", _role("a", "r", [subject])))
    assert [r.name for r in caches.keyroles_naming("a", "app")] == ["r"]
    other = {"kind": "ServiceAccount", "name": "batch"}
    caches.keyroles.apply(InformerEvent("MODIFIED", _role("a", "r", [other])))
    assert caches.keyroles_naming("a", "app") == []
    assert [r.name for r in caches.keyroles_naming("a", "batch")] == ["r"]
    caches.keyroles.apply(InformerEvent("DELETED", _role("a", "r", [other])))
    assert caches.keyroles_naming("a", "batch") == []
    assert caches.keyroles._index == {}
