"""HTTP endpoints of the delivery log (thin: validate, authorise, call the service)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from smarttasks.core.auth import AdminPrincipal, CurrentPrincipal
from smarttasks.core.db import SessionDep
from smarttasks.notifications import service
from smarttasks.notifications.schemas import DeliveryDetail, DeliveryOut, DeliveryPage, StatusFilter

router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"])

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
COMMON: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid access token", **PROBLEM},
    422: {"description": "Invalid input; `errors` names each field", **PROBLEM},
}
ONE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    404: {"description": "No such delivery, or not addressed to you", **PROBLEM},
}


@router.get(
    "",
    response_model=DeliveryPage,
    summary="List deliveries addressed to you (administrators: all), newest first",
    responses={**COMMON, 400: {"description": "Invalid cursor", **PROBLEM}},
)
async def list_deliveries(
    principal: CurrentPrincipal,
    session: SessionDep,
    status_: Annotated[
        list[StatusFilter] | None,
        Query(alias="status", max_length=6, description="Only these statuses; repeatable"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`next_cursor` of the previous page")
    ] = None,
) -> DeliveryPage:
    items, next_cursor = await service.list_deliveries(
        session,
        principal=principal,
        statuses=[s.value for s in status_ or ()],
        cursor=cursor,
        limit=limit,
    )
    return DeliveryPage(items=[DeliveryOut.of(d) for d in items], next_cursor=next_cursor)


@router.get(
    "/{delivery_id}",
    response_model=DeliveryDetail,
    summary="One delivery with every attempt (time, outcome, error, duration)",
    responses=ONE,
)
async def get_delivery(
    delivery_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> DeliveryDetail:
    delivery, attempts = await service.get_delivery(
        session, delivery_id=delivery_id, principal=principal
    )
    return DeliveryDetail.with_attempts(delivery, attempts)


@router.post(
    "/{delivery_id}/retry",
    response_model=DeliveryOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a failed or dead delivery again, with a fresh attempt budget (administrators)",
    responses={
        **ONE,
        403: {"description": "Not an administrator", **PROBLEM},
        409: {"description": "The delivery is not failed or dead", **PROBLEM},
    },
)
async def retry_delivery(
    delivery_id: uuid.UUID, admin: AdminPrincipal, session: SessionDep
) -> DeliveryOut:
    delivery = await service.retry_delivery(session, delivery_id=delivery_id, principal=admin)
    return DeliveryOut.of(delivery)
