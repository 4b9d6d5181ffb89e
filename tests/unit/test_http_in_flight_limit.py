"""The HTTP shell refuses work past its in-flight limit with a 503 a client can act on."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter

from smarttasks.core.http import create_app


async def test_requests_past_the_limit_get_503_with_retry_after_and_probes_still_answer() -> None:
    release = asyncio.Event()
    entered = asyncio.Semaphore(0)
    router = APIRouter()

    @router.get("/slow")
    async def slow() -> dict[str, str]:
        entered.release()
        await release.wait()
        return {"ok": "yes"}

    app = create_app(service="limits", title="limits", routers=[router], max_in_flight=2)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://limits") as client:
        held = [asyncio.create_task(client.get("/slow")) for _ in range(2)]
        for _ in held:
            await entered.acquire()  # both are inside the endpoint

        refused = await client.get("/slow")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/problem+json"
        assert "busy" in refused.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'smarttasks_http_shed_total{service="limits"} 1.0' in metrics

        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await client.get("/slow")).status_code == 200  # capacity is back
