"""Billing hand-off (issue: every ledger event to each `exports` sink as a
CloudEvent, through the durable outbox), with a local receiver, on both
backends: batched, signed like webhooks, retried, and a sink that was down
gets everything it missed, each id once."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.clock import FakeClock
from tests.support.harness import Harness

SECRET = "s" * 32


@dataclass
class Receiver:
    """A billing sink: keeps every batch it is sent; answers ``status``."""

    status: int = 200
    batches: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def take(request: web.Request) -> web.Response:
            self.batches.append((dict(request.headers), await request.read()))
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_post("/events", take)
        return app

    def ids(self) -> list[str]:
        return [e["id"] for _, body in self.batches for e in orjson.loads(body)]


async def proxy_exporting_to(make_proxy: Any, url: str, batch_size: int = 100) -> Harness:
    sink = {"name": "openmeter", "url": url, "secret": SECRET, "batch_size": batch_size}
    proxy: Harness = await make_proxy(exports=[sink])
    return proxy


async def chat(proxy: Harness, key: str, user: str = "u1") -> None:
    await proxy.sdk(key).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], user=user
    )


async def test_every_event_reaches_the_sink_as_a_signed_cloudevent(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    proxy = await proxy_exporting_to(make_proxy, str(server.make_url("/events")), batch_size=2)
    key = await proxy.new_client("acme")
    for user in ("u1", "u2", "u3"):
        await chat(proxy, key, user)
    events = await proxy.events("acme")
    assert await proxy.services.exports.deliver_due() == 3
    assert [len(orjson.loads(body)) for _, body in receiver.batches] == [2, 1]
    headers, body = receiver.batches[0]
    assert headers["Content-Type"] == "application/cloudevents-batch+json"
    stamp, mac = (part.split("=", 1)[1] for part in headers["X-Taximeter-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, expected)
    sent = {e["id"]: e for _, b in receiver.batches for e in orjson.loads(b)}
    assert set(sent) == {e["request_id"] for e in events}
    for event in events:
        cloud = sent[event["request_id"]]
        assert (cloud["specversion"], cloud["source"], cloud["type"]) == (
            "1.0",
            "taximeter",
            "taximeter.usage",
        )
        assert (cloud["subject"], cloud["time"]) == ("acme", event["created_at"])
        assert cloud["data"] == event  # the event's fields, as /admin/usage/events gives them
    assert await proxy.services.exports.deliver_due() == 0  # nothing is owed twice


async def test_a_sink_that_was_down_gets_what_it_missed_once(
    make_proxy: Any, aiohttp_server: Any, unused_tcp_port: int, clock: FakeClock
) -> None:
    receiver = Receiver()
    first = await aiohttp_server(receiver.app(), port=unused_tcp_port)
    proxy = await proxy_exporting_to(make_proxy, str(first.make_url("/events")))
    key = await proxy.new_client("acme")
    await first.close()  # the sink goes down
    for _ in range(3):
        await chat(proxy, key)
    await proxy.services.meter.ledger.flush()
    assert await proxy.services.exports.deliver_due() == 0
    store: Any = proxy.services.meter.store
    assert await store.exports_owed("openmeter") == 3
    await aiohttp_server(receiver.app(), port=unused_tcp_port)  # back, on the same address
    assert await proxy.services.exports.deliver_due() == 0  # not due yet: backoff
    clock.advance(seconds=3)
    assert await proxy.services.exports.deliver_due() == 3
    assert sorted(receiver.ids()) == sorted(e["request_id"] for e in await proxy.events("acme"))
    assert await store.exports_owed("openmeter") == 0


async def test_a_refusing_sink_is_retried_until_it_takes_them(
    make_proxy: Any, aiohttp_server: Any, clock: FakeClock
) -> None:
    receiver = Receiver(status=503)
    server = await aiohttp_server(receiver.app())
    proxy = await proxy_exporting_to(make_proxy, str(server.make_url("/events")))
    key = await proxy.new_client("acme")
    await chat(proxy, key)
    await proxy.services.meter.ledger.flush()
    assert await proxy.services.exports.deliver_due() == 0
    clock.advance(seconds=3)
    assert await proxy.services.exports.deliver_due() == 0  # refused again: the wait doubles
    clock.advance(seconds=3)
    assert await proxy.services.exports.deliver_due() == 0  # 4 s not passed yet
    receiver.status = 200
    clock.advance(seconds=2)
    assert await proxy.services.exports.deliver_due() == 1
    assert len(receiver.batches) == 3 and len(set(receiver.ids())) == 1
