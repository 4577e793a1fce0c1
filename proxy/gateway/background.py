"""Background responses (spec section 4b): ``POST /v1/responses`` with
``background: true`` is answered before the model runs, with no usage. The
call is admitted like any other; its reservation is then held (for longer,
at each look) until a watcher (:mod:`.watcher`) finds the response ended
upstream and charges it once, by the call's request id, from the usage the
finished response reports. Retrieving it (as often as the client likes,
streamed or not) is an object path of its owner's: free.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from typing import Any

from taximeter.pricing.charge import CallFacts, charge
from taximeter.pricing.extract import extract_usage
from taximeter.pricing.models import OwnedObject, Watch
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import ConflictError
from taximeter.proxy.gateway.objects import created, valid_id
from taximeter.proxy.gateway.ownership import record_created
from taximeter.proxy.gateway.settling import CLIENT_CLOSED, Call, tool_prices
from taximeter.proxy.gateway.watching import done_with, finish_now, hold_on, look_upstream, tariff_of
from taximeter.proxy.services import Services
from taximeter.store.base import StoreUnavailable

__all__ = ["RUNNING", "check_response", "is_background", "settle_before_delete", "watch_background"]

log = logging.getLogger("taximeter.proxy")

RUNNING = frozenset({"queued", "in_progress"})  # a response in any other status has ended
# The status each ended response is recorded with: a failed one is charged
# what it reports (else as reserved: it may have run), a cancelled one what it ran.
_STATUS = {"completed": 200, "incomplete": 200, "cancelled": CLIENT_CLOSED, "failed": 500}


def is_background(call: Call, status: int, reply: Any) -> bool:
    """Whether the upstream took ``call`` to run in the background: it answered
    with a response still queued or running (no usage yet)."""
    return (
        call.endpoint.family == "responses"
        and call.fields.get("background") is True
        and status < 300
        and isinstance(reply, dict)
        and valid_id(reply.get("id"))
        and reply.get("status") in RUNNING
    )


async def watch_background(services: Services, call: Call, reply: dict[str, Any]) -> None:
    """The upstream runs ``call`` in the background as response ``reply``:
    its reservation held until a watcher charges it; the response its caller's."""
    meter = services.meter
    admitted = call.reservation
    assert admitted is not None  # admitted before it was sent
    call.settled = True  # by the watcher, once it has ended
    meter.held.pop(call.client_id, call.request_id)  # not kept alive by this process: by its watch
    # Answered: it holds no slot of a concurrency limit while it runs on; the
    # rest of what it holds (spend caps, the minute it was asked in) stays.
    now = meter.clock()
    expires = now + timedelta(seconds=services.settings.watch_hold_s)
    kept = tuple(h for h in admitted.holds if h.limit.metric != "concurrent")
    reservation = replace(admitted, holds=kept, expires_at=expires)
    if kept != admitted.holds:  # let go and held again at once: no call comes in between
        await meter.release(call.client_id, call.request_id)
    await meter.hold_again(reservation, recount=False)
    response_id = str(reply["id"])
    owned = OwnedObject(response_id, "response", call.client_id, call.route.name, now)
    await record_created(services.objects, [owned], call.request_id)
    watch = Watch(response_id, "response", call.client_id, call.route.name, reservation, now)
    try:
        await services.objects.watch(watch, now + timedelta(seconds=services.settings.watch_check_s))
    except StoreUnavailable as exc:  # unwatched, its reservation is charged when it expires
        log.error(
            "response_unwatched", extra={"response": response_id, "client": call.client_id, "error": str(exc)}
        )


async def check_response(services: Services, watch: Watch) -> bool:
    """Look at a background response upstream; once it has ended, charge it
    (once, by its call's request id) and let its reservation go. True when
    it is done with."""
    meter = services.meter
    looked = await look_upstream(services, watch, "responses")
    if looked is None:
        return True
    upstream, reply = looked
    await hold_on(services, watch)  # held until counted (its limits count through it), or longer
    if reply.get("status") in RUNNING:
        return False
    estimate = watch.reservation.event
    facts = CallFacts(
        request_id=estimate.request_id,
        client_id=estimate.client_id,
        api_type=estimate.api_type,
        model=estimate.model,
        endpoint=estimate.endpoint,
        family="responses",
        price=meter.catalog.resolve(estimate.model, upstream.provider),
        end_user=estimate.end_user,
        conversation=estimate.conversation,
        reserved=Usage(
            input_tokens=estimate.input_tokens, output_tokens=estimate.output_tokens, estimated=True
        ),
        upstream=upstream.name,
        regional=upstream.regional,
    )
    usage = extract_usage("responses", {}, reply)
    facts = replace(facts, tool_prices=tool_prices(meter.catalog, usage, upstream.provider))
    event = charge(facts, usage, _STATUS.get(str(reply.get("status")), 500), tariff_of(watch), meter.clock())
    made = [kind_id for kind_id in created("responses", {}, reply) if kind_id[0] == "item"]
    owned = [OwnedObject(i, kind, watch.client_id, upstream.name, event.created_at) for kind, i in made]
    await record_created(services.objects, owned, estimate.request_id)
    await meter.charge_late(event, ())
    services.metrics.call(event)
    await done_with(services, watch)
    return True


async def settle_before_delete(services: Services, response_id: str) -> None:
    """A background response its owner deletes is charged first (deleted,
    the upstream could no longer say what it used); one still running
    cannot be deleted (409: cancel it first)."""
    if await finish_now(services, response_id, check_response) is False:
        raise ConflictError(
            f"response {response_id!r} still runs in the background: cancel it "
            "(POST /v1/responses/{id}/cancel), then delete it"
        )
