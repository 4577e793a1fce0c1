"""/admin/openapi.json is a valid OpenAPI 3.1 document and real responses of
the admin and status API validate against it."""

from __future__ import annotations

import asyncio
from typing import Any

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.support.clock import FakeClock
from tests.support.harness import Harness


def check(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    response = doc["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": doc["components"]}).validate(body)


async def test_real_responses_match_the_document(proxy: Harness, clock: FakeClock) -> None:
    status, doc = await proxy.admin("GET", "/admin/openapi.json")
    assert status == 200
    await asyncio.to_thread(
        validate, doc
    )  # a valid OpenAPI 3.1 document (the validator reads its schemas from disk)

    calls: list[tuple[str, str, str, Any, int]] = [
        ("post", "/admin/clients", "/admin/clients", {"id": "acme", "name": "Acme"}, 201),
        ("get", "/admin/clients", "/admin/clients", None, 200),
        ("post", "/admin/clients/{client_id}/keys", "/admin/clients/acme/keys", None, 201),
        ("get", "/admin/clients/{client_id}/keys", "/admin/clients/acme/keys", None, 200),
        (
            "put",
            "/admin/budgets/{client_id}",
            "/admin/budgets/acme",
            {"mode": "both", "token_limit": 5000, "cost_limit": "9.5"},
            200,
        ),
        ("get", "/admin/budgets/{client_id}", "/admin/budgets/acme", None, 200),
        ("get", "/admin/budgets", "/admin/budgets", None, 200),
        ("post", "/admin/budgets/{client_id}/pause", "/admin/budgets/acme/pause", None, 200),
        ("post", "/admin/budgets/{client_id}/resume", "/admin/budgets/acme/resume", None, 200),
        ("get", "/admin/pricing", "/admin/pricing", None, 200),
        ("get", "/admin/pricing/{model}", "/admin/pricing/dall-e-3", None, 200),
        ("post", "/admin/clients", "/admin/clients", {"id": "Bad Id"}, 422),
        ("get", "/admin/budgets/{client_id}", "/admin/budgets/nobody", None, 404),
    ]
    key = None
    for method, template, path, body, expected in calls:
        status, reply = await proxy.admin(method.upper(), path, body)
        assert status == expected, (path, reply)
        check(doc, template, method, status, reply)
        if template.endswith("/keys") and method == "post":
            key = reply["key"]
    assert key is not None
    client = proxy.sdk(key)
    await client.chat.completions.create(model="gpt-4o", messages=[], user="u1")
    await client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    for template, path in (
        ("/admin/usage/events", "/admin/usage/events?client_id=acme"),
        ("/admin/usage", "/admin/usage?group_by=model"),
    ):
        await proxy.services.meter.ledger.flush()
        status, reply = await proxy.admin("GET", path)
        check(doc, template, "get", status, reply)
    async with proxy.http.get(
        f"{proxy.url}/budget/status", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        check(doc, "/budget/status", "get", resp.status, await resp.json())
    clock.advance(seconds=1)  # a reset comes after the calls it follows
    status, reply = await proxy.admin("POST", "/admin/budgets/acme/reset")
    check(doc, "/admin/budgets/{client_id}/reset", "post", status, reply)
    status, reply = await proxy.admin("DELETE", f"/admin/keys/{key[:12]}")
    check(doc, "/admin/keys/{prefix}", "delete", status, reply)


async def test_every_admin_route_is_documented(proxy: Harness) -> None:
    _, doc = await proxy.admin("GET", "/admin/openapi.json")
    routes = {
        (r.method.lower(), r.resource.canonical)  # type: ignore[union-attr]
        for r in proxy.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith(("/admin", "/budget"))
        and r.method != "HEAD"
    }
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    routes = {(m, p.replace("{action}", "reset")) for m, p in routes}
    assert {(m, p) for m, p in routes if "{action" not in p} <= documented | {
        ("post", "/admin/budgets/{client_id}/reset")
    }
