"""``KubeApi.list(..., metadata_only=True)`` against a real HTTP server: what it asks for.

The server (tests/unit/kube/apiserver.py) answers like kube-apiserver does: a
``PartialObjectMetadataList`` when the ``Accept`` header asks for one, else the whole
objects. The tests check the header is sent with ``metadata_only`` and only then, on
every page of a paged list and on every retry. What a real API server answers to that
header: tests/e2e/test_metadata_lists.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from secure_keys.kube.client import APIKEYS, ApiError, Credentials, KubeApi, RetryPolicy
from tests.unit.kube.apiserver import ScriptedServer, Seen, ok, status

PATH = "/apis/securekeys.io/v1alpha1/namespaces/ns/apikeys"
# Spelled out rather than imported, so a wrong constant in the client fails here.
METADATA_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
FAST = RetryPolicy(retries=3, max_delay=0.05, base_delay=0.01, jitter=0.0)
NAMES = ["a", "b", "c"]


def _accept(seen: Seen) -> str | None:
    return {k.lower(): v for k, v in seen.headers.items()}.get("accept")


async def _apikeys(request: web.Request) -> web.StreamResponse:
    """Two per page (``continue`` is the offset); metadata only when the Accept asks."""
    start = int(request.query.get("continue") or 0)
    limit = int(request.query.get("limit") or len(NAMES))
    partial = request.headers.get("Accept") == METADATA_ACCEPT
    items: list[dict[str, Any]] = []
    for name in NAMES[start : start + limit]:
        metadata = {"name": name, "namespace": "ns", "labels": {"team": "a"}}
        if partial:
            items.append(
                {
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": metadata,
                }
            )
        else:
            items.append({"kind": "ApiKey", "metadata": metadata, "spec": {"source": "x" * 100}})
    list_metadata: dict[str, str] = {"resourceVersion": "7"}
    if start + limit < len(NAMES):
        list_metadata["continue"] = str(start + limit)
    kind = "PartialObjectMetadataList" if partial else "ApiKeyList"
    return ok({"kind": kind, "metadata": list_metadata, "items": items})


async def _list_all(api: KubeApi, *, metadata_only: bool) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = await api.list(APIKEYS, "ns", limit=2, continue_=token, metadata_only=metadata_only)
        pages.append(page)
        token = page["metadata"].get("continue")
        if not token:
            return pages


@pytest.mark.parametrize("metadata_only", [True, False])
def test_metadata_only_sets_the_accept_header_on_every_page(metadata_only: bool) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[Seen]]:
        async with ScriptedServer() as server:
            server.on("GET", PATH, _apikeys)
            async with KubeApi(Credentials(server=server.url, token="t")) as api:
                pages = await _list_all(api, metadata_only=metadata_only)
            return pages, server.requests("GET", PATH)

    pages, seen = asyncio.run(scenario())
    # Paging is unchanged: the second request carries the first page's continue token.
    assert [s.query for s in seen] == [{"limit": "2"}, {"limit": "2", "continue": "2"}]
    assert [item["metadata"]["name"] for page in pages for item in page["items"]] == NAMES
    if metadata_only:
        assert [_accept(s) for s in seen] == [METADATA_ACCEPT, METADATA_ACCEPT]
        assert {page["kind"] for page in pages} == {"PartialObjectMetadataList"}
        # Returned as the server sent it: metadata, and nothing the caller did not ask for.
        assert all(
            set(item) == {"apiVersion", "kind", "metadata"} for p in pages for item in p["items"]
        )
    else:
        assert [_accept(s) for s in seen] == ["application/json", "application/json"]
        assert {page["kind"] for page in pages} == {"ApiKeyList"}
    # Authentication is kept beside the replaced Accept header.
    assert all(s.headers.get("Authorization") == "Bearer t" for s in seen)


def test_a_retried_metadata_list_asks_for_metadata_again() -> None:
    answers = [status(429, "TooManyRequests", "", **{"Retry-After": "0"})]

    async def handler(request: web.Request) -> web.StreamResponse:
        return answers.pop(0) if answers else await _apikeys(request)

    async def scenario() -> tuple[dict[str, Any], list[Seen]]:
        async with ScriptedServer() as server:
            server.on("GET", PATH, handler)
            async with KubeApi(Credentials(server=server.url), retry=FAST) as api:
                page = await api.list(APIKEYS, "ns", limit=2, metadata_only=True)
            return page, server.requests("GET", PATH)

    page, seen = asyncio.run(scenario())
    assert len(seen) == 2
    assert [_accept(s) for s in seen] == [METADATA_ACCEPT, METADATA_ACCEPT]
    assert page["kind"] == "PartialObjectMetadataList"


def test_a_server_that_cannot_send_metadata_only_is_an_error_not_whole_objects() -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Accept") == METADATA_ACCEPT:
            return status(406, "NotAcceptable", "only application/json")
        return await _apikeys(request)

    async def scenario() -> list[Seen]:
        async with ScriptedServer() as server:
            server.on("GET", PATH, refuse)
            async with KubeApi(Credentials(server=server.url), retry=FAST) as api:
                with pytest.raises(ApiError) as caught:
                    await api.list(APIKEYS, "ns", metadata_only=True)
            assert caught.value.status == 406
            return server.requests("GET", PATH)

    assert len(asyncio.run(scenario())) == 1  # 406 is not retried
