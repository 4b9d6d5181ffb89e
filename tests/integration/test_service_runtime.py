"""A service's start-up objects are frozen out of garbage collection once it has started."""

from __future__ import annotations

import gc

import pytest

from smarttasks.core.service_app import create_service_app
from smarttasks.core.settings import ServiceSettings

pytestmark = pytest.mark.integration


async def test_a_started_service_leaves_its_start_up_objects_out_of_collections(
    database_url: str,
) -> None:
    settings = ServiceSettings(database_url=database_url, jwks_url="http://127.0.0.1:9/jwks")
    app = create_service_app(service="runtime", title="runtime", settings=settings, routers=[])
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        async with app.router.lifespan_context(app):
            # Everything allocated until the service started is frozen, the app included,
            # so a full collection no longer walks it.
            assert gc.get_freeze_count() > 0
            assert not any(tracked is app for tracked in gc.get_objects())
    finally:
        gc.unfreeze()
