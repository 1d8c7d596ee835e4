"""The list-then-watch informer against a real HTTP server (tests/unit/kube/apiserver.py).

The server is a real aiohttp server on 127.0.0.1, not a mock: lists and chunked watch
streams cross a socket. Each test scripts the lists and watches it answers, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from secure_keys.kube.client import SECRETS, Credentials, KubeApi
from secure_keys.kube.informer import Backoff, InformerEvent, informer, relist_events
from tests.unit.kube.apiserver import ScriptedServer, ok, status, stream

PATH = "/api/v1/secrets"
QUICK = Backoff(initial=0.01, maximum=0.05, jitter=0.0)


def _obj(name: str, rv: str, uid: str | None = None, **labels: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}"}
    metadata |= {"resourceVersion": rv, "labels": labels}
    return {"kind": "Secret", "metadata": metadata, "data": {"k": "dmFsdWU="}}


class Script:
    """Answers to list and watch requests, in order; the last watch hangs."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "1":
            answer = self.watches.pop(0) if self.watches else []
            if isinstance(answer, web.StreamResponse):
                return answer
            return await stream(request, answer, hang=not self.watches)
        answer = self.lists.pop(0)
        if isinstance(answer, web.StreamResponse):
            return answer
        items, rv = answer
        return ok({"kind": "SecretList", "metadata": {"resourceVersion": rv}, "items": items})


async def _collect(
    server: ScriptedServer,
    count: int,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> list[InformerEvent]:
    events: list[InformerEvent] = []
    async with KubeApi(Credentials(server=server.url)) as api:
        stream_ = informer(
            api,
            SECRETS,
            None,
            label_selector=label_selector,
            field_selector=field_selector,
            backoff=QUICK,
        )
        async with asyncio.timeout(10):
            async for event in stream_:
                events.append(event)
                if len(events) == count:
                    break
        await stream_.aclose()
    return events


def _summary(events: list[InformerEvent]) -> list[tuple[str, str, bool]]:
    return [(e.type, str(e.metadata.get("name", "")), e.synthetic) for e in events]


def test_selectors_reach_the_server_on_every_list_and_watch() -> None:
    async def scenario() -> ScriptedServer:
        async with ScriptedServer() as server:
            gone = status(410, "Expired", "too old")
            server.on("GET", PATH, Script([([], "1"), ([], "2")], [gone, []]))
            await _collect(
                server,
                2,
                label_selector="app.kubernetes.io/managed-by=secure-keys",
                field_selector="metadata.name=x",
            )
            return server

    server = asyncio.run(scenario())
    requests = server.requests("GET", PATH)
    assert len(requests) >= 3  # list, watch (410), list again
    for seen in requests:
        assert seen.query["labelSelector"] == "app.kubernetes.io/managed-by=secure-keys"
        assert seen.query["fieldSelector"] == "metadata.name=x"
    assert [s.query.get("watch") for s in requests[:3]] == [None, "1", None]
    assert requests[1].query["resourceVersion"] == "1"
    assert requests[1].query["allowWatchBookmarks"] == "true"


def test_410_error_event_relists_and_reports_what_changed_meanwhile() -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}

    async def scenario() -> list[InformerEvent]:
        async with ScriptedServer() as server:
            first = [_obj("a", "10"), _obj("b", "11"), _obj("c", "12")]
            # Meanwhile: a deleted, b changed, c re-created (new uid), d added.
            second = [_obj("b", "20"), _obj("c", "21", uid="uid-c2"), _obj("d", "22")]
            watch = [
                {"type": "MODIFIED", "object": _obj("a", "15")},
                {"type": "ERROR", "object": gone},
            ]
            after = [{"type": "MODIFIED", "object": _obj("d", "23")}]
            server.on("GET", PATH, Script([(first, "12"), (second, "22")], [watch, after]))
            events = await _collect(server, 12)
            watches = [s for s in server.requests("GET", PATH) if s.query.get("watch")]
            assert watches[-1].query["resourceVersion"] == "22"  # from the second list
            return events

    assert _summary(asyncio.run(scenario())) == [
        ("ADDED", "a", True),
        ("ADDED", "b", True),
        ("ADDED", "c", True),
        ("LISTED", "", False),
        ("MODIFIED", "a", False),
        ("MODIFIED", "b", True),
        ("DELETED", "c", True),
        ("ADDED", "c", True),
        ("ADDED", "d", True),
        ("DELETED", "a", True),
        ("LISTED", "", False),
        ("MODIFIED", "d", False),
    ]


def test_410_status_on_the_watch_relists_too() -> None:
    async def scenario() -> list[InformerEvent]:
        async with ScriptedServer() as server:
            gone = status(410, "Gone", "too old")
            server.on("GET", PATH, Script([([_obj("a", "1")], "1"), ([], "5")], [gone, []]))
            return await _collect(server, 4)

    assert _summary(asyncio.run(scenario())) == [
        ("ADDED", "a", True),
        ("LISTED", "", False),
        ("DELETED", "a", True),
        ("LISTED", "", False),
    ]


def test_a_synthetic_delete_carries_metadata_only() -> None:
    events, known = relist_events({}, [_obj("a", "1", owner="x")])
    assert events[0].object["data"]  # ADDED: the object as listed
    events, _ = relist_events(known, [])
    [deleted] = events
    assert deleted.type == "DELETED"
    assert set(deleted.object) == {"metadata"}
    assert deleted.metadata["labels"] == {"owner": "x"}


def test_watch_resumes_from_the_last_bookmark_without_relisting() -> None:
    bookmark = {
        "type": "BOOKMARK",
        "object": {"kind": "Secret", "metadata": {"resourceVersion": "50"}},
    }

    async def scenario() -> list[str]:
        async with ScriptedServer() as server:
            watches = [
                [{"type": "ADDED", "object": _obj("a", "7")}, bookmark],  # then the watch ends
                [{"type": "ADDED", "object": _obj("b", "51")}],
            ]
            server.on("GET", PATH, Script([([], "5")], watches))
            events = await _collect(server, 3)
            assert _summary(events) == [
                ("LISTED", "", False),
                ("ADDED", "a", False),
                ("ADDED", "b", False),
            ]
            requests = server.requests("GET", PATH)
            return [s.query.get("resourceVersion", "list") for s in requests]

    assert asyncio.run(scenario()) == ["list", "5", "50"]


def test_errors_back_off_and_the_informer_carries_on() -> None:
    async def scenario() -> list[InformerEvent]:
        async with ScriptedServer() as server:
            failing = status(500, "InternalError", "etcd is away")
            server.on("GET", PATH, Script([failing, ([_obj("a", "3")], "3")], [[]]))
            return await _collect(server, 2)

    assert _summary(asyncio.run(scenario())) == [("ADDED", "a", True), ("LISTED", "", False)]


def test_backoff_arithmetic() -> None:
    backoff = Backoff(initial=0.5, maximum=30, jitter=0.2)
    assert backoff.delay(0, None, 0.0) == 0.5
    assert backoff.delay(3, None, 0.0) == 4
    assert backoff.delay(20, None, 0.0) == 30
    assert backoff.delay(0, 7, 0.0) == 7  # the server's Retry-After, when longer
    assert backoff.delay(0, None, 1.0) == 0.6


class PagedScript:
    """Lists answered a page at a time (``limit``/``continue``); the watch hangs."""

    def __init__(self, pages: list[list[dict[str, Any]]], rv: str) -> None:
        self.pages = pages
        self.rv = rv

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "1":
            return await stream(request, [], hang=True)
        index = int(request.query.get("continue") or 0)
        metadata = {"resourceVersion": self.rv}
        if index + 1 < len(self.pages):
            metadata["continue"] = str(index + 1)
        return ok({"kind": "SecretList", "metadata": metadata, "items": self.pages[index]})


def test_a_list_is_handed_over_a_page_at_a_time() -> None:
    """Each page's events reach the consumer before the next page is asked for, so the
    informer never holds more than one page of whole objects, however long the list."""

    async def scenario() -> list[tuple[str, str, int]]:
        async with ScriptedServer() as server:
            pages = [[_obj("a", "1"), _obj("b", "2")], [_obj("c", "3")], [_obj("d", "4")]]
            server.on("GET", PATH, PagedScript(pages, "4"))
            seen: list[tuple[str, str, int]] = []
            async with KubeApi(Credentials(server=server.url)) as api:
                stream_ = informer(api, SECRETS, None, page_size=2, backoff=QUICK)
                async with asyncio.timeout(10):
                    async for event in stream_:
                        lists = [
                            s for s in server.requests("GET", PATH) if not s.query.get("watch")
                        ]
                        seen.append((event.type, str(event.metadata.get("name", "")), len(lists)))
                        if event.type == "LISTED":
                            break
                await stream_.aclose()
            assert [s.query["limit"] for s in server.requests("GET", PATH)[:3]] == ["2"] * 3
            return seen

    assert asyncio.run(scenario()) == [
        ("ADDED", "a", 1),
        ("ADDED", "b", 1),
        ("ADDED", "c", 2),
        ("ADDED", "d", 3),
        ("LISTED", "", 3),
    ]


def test_a_paged_relist_reports_what_went_after_its_last_page() -> None:
    async def scenario() -> list[InformerEvent]:
        async with ScriptedServer() as server:
            first = PagedScript([[_obj("a", "1")], [_obj("b", "2")]], "2")
            again = PagedScript([[_obj("b", "2")], [_obj("c", "5")]], "5")
            expired = False

            async def handler(request: web.Request) -> web.StreamResponse:
                nonlocal expired
                if request.query.get("watch") == "1" and not expired:
                    expired = True
                    return status(410, "Expired", "too old")
                return await (again if expired else first)(request)

            server.on("GET", PATH, handler)
            return await _collect(server, 6)

    assert _summary(asyncio.run(scenario())) == [
        ("ADDED", "a", True),
        ("ADDED", "b", True),
        ("LISTED", "", False),
        ("ADDED", "c", True),
        ("DELETED", "a", True),
        ("LISTED", "", False),
    ]
