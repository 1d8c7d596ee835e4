"""Caches of the same objects share one informer (``run_caches``).

Two caches keeping different projections of the same objects are fed by one informer:
each object is listed, watched, parsed and remembered once, not once per cache. Against
the scripted API server of tests/unit/kube/apiserver.py. The gateway's use:
tests/unit/gateway/test_shared_informers.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from secure_keys.kube.cache import WatchCache, run_caches
from secure_keys.kube.client import SECRETS, Credentials, KubeApi
from secure_keys.kube.informer import Backoff
from tests.unit.kube.apiserver import ScriptedServer, ok, stream

PATH = "/api/v1/secrets"


def _name(obj: dict[str, Any]) -> str | None:
    return str(obj["metadata"]["name"])


def _size(obj: dict[str, Any]) -> int | None:
    return len(obj.get("data") or {})


def test_caches_of_one_resource_share_one_list_and_one_watch() -> None:
    async def scenario() -> tuple[list[str], WatchCache[str], WatchCache[int]]:
        names: WatchCache[str] = WatchCache(SECRETS, _name)
        sizes: WatchCache[int] = WatchCache(SECRETS, _size)

        async def answer(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch") == "1":
                added = {"metadata": {"name": "b", "namespace": "ns", "resourceVersion": "2"}}
                return await stream(request, [{"type": "ADDED", "object": added}], hang=True)
            item = {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "1"}}
            return ok({"metadata": {"resourceVersion": "1"}, "items": [item | {"data": {"k": ""}}]})

        async with ScriptedServer() as server:
            server.on("GET", PATH, answer)
            async with KubeApi(Credentials(server=server.url)) as api:
                task = asyncio.create_task(run_caches(api, [names, sizes], backoff=Backoff()))
                async with asyncio.timeout(10):
                    while len(names) < 2 or len(sizes) < 2:
                        await asyncio.sleep(0.01)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            kinds = [
                "watch" if s.query.get("watch") else "list" for s in server.requests("GET", PATH)
            ]
            return kinds, names, sizes

    kinds, names, sizes = asyncio.run(scenario())
    assert kinds == ["list", "watch"]
    assert names.synced
    assert sizes.synced
    assert (names.get("ns", "a"), names.get("ns", "b")) == ("a", "b")
    assert (sizes.get("ns", "a"), sizes.get("ns", "b")) == (1, 0)
