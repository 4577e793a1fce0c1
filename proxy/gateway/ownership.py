"""Tenants kept apart on a shared upstream key (spec section 4b): objects a
call creates are recorded with their client; ids a call names, and the
object paths it asks for, are its own or answer 404 before anything goes
upstream. What counts as a reference is read in :mod:`.objects`."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from taximeter.pricing.models import OwnedObject
from taximeter.proxy.errors import NotFoundError
from taximeter.proxy.gateway.bodies import json_object, read_body
from taximeter.proxy.gateway.objects import MAX_REFERENCES, ObjectRoute, Reference, referenced
from taximeter.proxy.services import Services
from taximeter.store.base import UpstreamObjects

__all__ = ["check_references", "checked_body", "owned_route", "record_created"]

log = logging.getLogger("taximeter.proxy")


def _not_found(kind: str, object_id: str, param: str) -> NotFoundError:
    # The same answer for another client's object and for one never seen: no
    # tenant learns that an id exists.
    named = f" with id '{object_id}'" if object_id else ""
    return NotFoundError(f"No {kind.replace('_', ' ')} found{named}.", param=param)


def _mine(record: OwnedObject | None, client_id: str, kind: str) -> bool:
    return record is not None and record.client_id == client_id and record.kind == kind


async def check_references(objects: UpstreamObjects, client_id: str, references: list[Reference]) -> None:
    """Raise 404 ``not_found`` unless every object named is ``client_id``'s own."""
    if not references:
        return
    owned = await objects.owned_objects([r.object_id for r in references if r.valid])
    for reference in references:
        record = owned.get(reference.object_id) if reference.valid else None
        if not _mine(record, client_id, reference.kind):
            raise _not_found(reference.kind, reference.object_id, reference.param)


async def checked_body(
    request: web.Request, services: Services, client_id: str, *, most: int = MAX_REFERENCES
) -> bytes:
    """A JSON body, every object it names (at most ``most``) the caller's own
    (404 otherwise); as parsed, so the upstream reads what was checked."""
    body = await read_body(request, services.settings.max_body_bytes)
    if not body:
        return b"{}"
    fields = json_object(body)
    await check_references(services.objects, client_id, referenced("responses", fields, most))
    return orjson.dumps(fields)


async def owned_route(objects: UpstreamObjects, client_id: str, route: ObjectRoute) -> OwnedObject:
    """The object a path is about, when it is ``client_id``'s; else 404."""
    found = await objects.owned_objects([route.object_id])
    record = found.get(route.object_id)
    if record is None or not _mine(record, client_id, route.kind):
        raise _not_found(route.kind, route.object_id, "id")
    return record


async def record_created(objects: UpstreamObjects, owned: list[OwnedObject], request_id: str) -> None:
    """Keep who created the objects a call made, before the client hears
    their ids. A store that cannot take them leaves them unreachable through
    taximeter (404 to everyone), never reachable by another client."""
    if not owned:
        return
    try:
        await objects.own_objects(owned)
    except Exception as exc:  # never the call's failure: it is settled and answered all the same
        log.warning(
            "object_unrecorded",
            extra={
                "request_id": request_id,
                "client": owned[0].client_id,
                "objects": len(owned),
                "error": str(exc),
            },
        )
