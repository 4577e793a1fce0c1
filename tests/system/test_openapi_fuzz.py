"""Schemathesis against a running proxy: every operation of /admin/openapi.json,
every check, must find the server and the document in agreement.

The run is the one ``st run --checks all`` makes (examples, coverage, fuzzing
and stateful phases; valid and invalid data), bounded and derandomized so it
takes seconds and finds the same cases on every machine. The requests are
blocking (``requests``), so the engine runs in a thread while the server
answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from tests.support.harness import ADMIN_TOKEN, Harness

# Every check this version of schemathesis offers; max_response_time needs a
# limit and would only measure the machine running the suite.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
    "object_level_authorization",
)

# The rules a JSON schema cannot state: one query parameter (to) must come
# after another (from), both dates valid alone, the pair answered 422; and a
# cursor is opaque: only one the API gave is read (any other string is 422).
UNSAYABLE = (b'"message": "to must be after from"', b'"message": "cursor is not one this API gave"')
# Headers that frame the HTTP message itself: a garbage value (an "extra
# header" of a negative case) is refused by aiohttp's parser with a plain-text
# 400 before any route runs, the same for every path. Not the API's contract.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"}


def run_schemathesis(doc: dict[str, Any], base_url: str, key: str) -> tuple[int, list[str]]:
    """Run every phase and check; the number of test cases and what failed."""
    config = schemathesis.Config.from_dict(
        {
            "seed": 20251125,
            "base-url": base_url,
            # Each operation gets the credential of its security scheme: the
            # admin token, or a client's key for /budget/status.
            "auth": {"openapi": {"adminToken": {"bearer": ADMIN_TOKEN}, "virtualKey": {"bearer": key}}},
            "checks": {name: {"enabled": True} for name in CHECKS},
            "generation": {
                "mode": "all",
                "max-examples": 20,
                "deterministic": True,
                "database": "none",
            },
            "suppress-health-check": ["all"],
        }
    )
    schema = schemathesis.openapi.from_dict(doc, config=config)

    @schema.hook
    def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
        return not FRAMING & {name.lower() for name in case.headers or {}}

    cases = 0
    problems: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            for case_id, checks in recorder.checks.items():
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                answer = response.content[:300] if response is not None else b""
                for check in checks:
                    if check.status != Status.FAILURE or check.failure_info is None:
                        continue
                    if check.name == "positive_data_acceptance" and any(u in answer for u in UNSAYABLE):
                        continue
                    failure = check.failure_info.failure
                    problems.append(
                        f"{recorder.cases[case_id].value.operation.label} [{check.name}] "
                        f"{failure.title}: {failure.message}\n    {check.failure_info.code_sample}\n"
                        f"    -> {response.status_code if response else None} {answer!r}"
                    )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"error: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return cases, problems


@pytest.mark.parametrize("backend", ["embedded", "production"], indirect=True)
async def test_schemathesis_finds_the_document_true(proxy: Harness) -> None:
    status, doc = await proxy.admin("GET", "/admin/openapi.json")
    assert status == 200
    key = await proxy.new_client("acme", mode="tokens", token_limit=1000)
    cases, problems = await asyncio.to_thread(run_schemathesis, doc, proxy.url, key)
    assert cases > 500, cases  # every operation was exercised
    assert not problems, "\n".join(sorted(set(problems)))
