"""Property-based fuzzing of every operation in the embedded app's OpenAPI schema.

Generated requests (valid and invalid) go to a real `smarttasks up` process; none may
yield a server error or a response that breaks the published schema.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.server import EmbeddedProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="session")
def fuzz_user(embedded_server: EmbeddedProcess) -> dict[str, str]:
    email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    password = "fuzzing all the things"
    with httpx.Client(base_url=embedded_server.url) as client:
        client.post(
            "/api/v1/auth/register",
            json={"email": email, "password": password, "display_name": "Fuzz"},
        ).raise_for_status()
        token = client.post(
            "/api/v1/auth/token", data={"username": email, "password": password}
        ).json()["access_token"]
        # Something for the item endpoints to find.
        client.post(
            "/api/v1/tasks", headers={"Authorization": f"Bearer {token}"}, json={"title": "seed"}
        ).raise_for_status()
    return {"Authorization": f"Bearer {token}"}


def test_no_operation_fails_or_breaks_its_schema(
    fuzz_user: dict[str, str], embedded_server: EmbeddedProcess
) -> None:
    schema = schemathesis.openapi.from_url(f"{embedded_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, "every API should be in the schema"
    for operation in operations:
        # Both well-formed and deliberately invalid requests, for every operation.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=20,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def exercise(case: Any) -> None:
                case.call_and_validate(
                    base_url=embedded_server.url, headers=fuzz_user, checks=CHECKS, timeout=30
                )

            try:
                exercise()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid form to send.
                if mode is GenerationMode.POSITIVE:
                    raise
