"""Property-based fuzzing of the pure parsers: SSE splitting, usage, stream metering, multipart.

Each property holds for every input hypothesis can make: the parsers never raise
(but the documented ValueError of parse_form), never lose or invent a byte,
never depend on how a stream was chunked, and never read a number outside its
bounds.
"""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from taximeter.pricing.extract import (
    MAX_AUDIO_SECONDS,
    MAX_TOKENS,
    extract_usage,
    parse_usage,
    reported_usage,
)
from taximeter.pricing.sse import SseMessage, SseSplitter
from taximeter.pricing.stream_usage import StreamUsage
from taximeter.pricing.usage import Usage
from taximeter.proxy.gateway.forms import parse_form

FUZZ = settings(deadline=None, max_examples=200, database=None)  # no example files left in the tree

# --- SSE ------------------------------------------------------------------------------------

# Pieces that make line ends, blank lines, fields and awkward bytes likely.
_SSE_PIECES = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"data: ",
        b"data:",
        b"event: x",
        b": c",
        b"{}",
        b"1",
        b"\xe2\x80\xa8",
        b"\xc2\x85",
        b"\xff",
    ]
)
_STREAMS = st.lists(_SSE_PIECES | st.binary(max_size=8), max_size=60).map(b"".join)


@st.composite
def _chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    stream = draw(_STREAMS)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    return stream, [stream[a:b] for a, b in itertools.pairwise(bounds)]


def _run(chunks: list[bytes], max_event_bytes: int, *, end: bool = True) -> tuple[list[SseMessage], bytes]:
    splitter = SseSplitter(max_event_bytes=max_event_bytes)
    events = [e for chunk in chunks for e in splitter.feed(chunk)]
    if end:
        events += splitter.end()
    return events, splitter.rest()


def _reference(stream: bytes) -> tuple[list[tuple[str | None, str]], bytes]:
    """A second, whole-stream reading of the format: lines end at CRLF, LF or CR; an event at a blank line."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    start = 0
    for line in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", stream):
        text = line.group(1)
        if not text:
            events.append((name, "\n".join(data)))
            name, data, start = None, [], line.end()
            continue
        field, _, value = text.partition(b":")
        value = value.removeprefix(b" ").decode("utf-8", "replace")
        if field == b"event":
            name = value
        elif field == b"data":
            data.append(value)
    return events, stream[start:]


@FUZZ
@given(_chunked(), st.integers(1, 64), st.booleans())
def test_sse_every_byte_is_handed_back_exactly_once(
    case: tuple[bytes, list[bytes]], max_event_bytes: int, end: bool
) -> None:
    stream, chunks = case
    events, rest = _run(chunks, max_event_bytes, end=end)
    assert b"".join(e.raw for e in events) + rest == stream
    assert all(0 < len(e.raw) <= max_event_bytes for e in events)


@FUZZ
@given(_chunked(), st.integers(1, 64))
def test_sse_events_do_not_depend_on_the_chunking(
    case: tuple[bytes, list[bytes]], max_event_bytes: int
) -> None:
    stream, chunks = case
    assert _run(chunks, max_event_bytes) == _run([stream], max_event_bytes)
    assert _run(chunks, max_event_bytes) == _run([bytes([b]) for b in stream], max_event_bytes)


@FUZZ
@given(_chunked())
def test_sse_events_match_a_whole_stream_reading(case: tuple[bytes, list[bytes]]) -> None:
    stream, chunks = case
    events, rest = _run(chunks, 8 * 1024 * 1024)
    assert ([(e.event, e.data) for e in events], rest) == _reference(stream)


# --- usage ----------------------------------------------------------------------------------

_USAGE_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "audio_tokens",
    "image_tokens",
    "reasoning_tokens",
    "prompt_tokens_details",
    "input_tokens_details",
    "input_token_details",
    "completion_tokens_details",
    "output_tokens_details",
    "type",
    "seconds",
    "usage",
    "response",
    "data",
    "duration",
    "choices",
    "delta",
]
_NUMBERS = (
    st.integers(-(2**70), 2**70)
    | st.integers(0, 2000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, MAX_TOKENS, MAX_TOKENS + 1, 2**63, -1, 1.5, True, False, "12", "duration"])
)
_JSONISH = st.recursive(
    st.none() | _NUMBERS | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_USAGE_KEYS) | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=30,
)
_FAMILIES = st.sampled_from(
    ["chat", "completions", "responses", "embeddings", "speech", "transcription", "image", "moderation"]
)


def _assert_bounded(usage: Usage) -> None:
    for count in (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        usage.audio_input_tokens,
        usage.audio_output_tokens,
        usage.image_input_tokens,
    ):
        assert type(count) is int and 0 <= count <= MAX_TOKENS
    assert usage.cached_tokens + usage.audio_input_tokens + usage.image_input_tokens <= usage.input_tokens
    assert usage.reasoning_tokens + usage.audio_output_tokens <= usage.output_tokens
    assert usage.audio_seconds.is_finite() and usage.audio_seconds >= 0


@FUZZ
@given(_JSONISH)
def test_parse_usage_never_raises_and_stays_in_bounds(value: Any) -> None:
    usage = parse_usage(value)
    if not isinstance(value, dict):
        assert usage is None
        return
    assert usage is not None
    _assert_bounded(usage)
    assert usage.audio_seconds <= MAX_AUDIO_SECONDS
    if usage.estimated:  # invalid: zero counts, never a partial reading
        assert usage == Usage(estimated=True)


_COUNT = st.integers(0, MAX_TOKENS)


@st.composite
def _valid_usage(draw: st.DrawFn) -> tuple[dict[str, Any], Usage]:
    cached, audio_in, image_in, text_in = (draw(st.integers(0, MAX_TOKENS // 4)) for _ in range(4))
    reasoning, audio_out, text_out = (draw(st.integers(0, MAX_TOKENS // 3)) for _ in range(3))
    input_tokens = cached + audio_in + image_in + text_in
    output_tokens = reasoning + audio_out + text_out
    responses = draw(st.booleans())
    usage = {
        "input_tokens" if responses else "prompt_tokens": input_tokens,
        "output_tokens" if responses else "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "input_tokens_details" if responses else "prompt_tokens_details": {
            "cached_tokens": cached,
            "audio_tokens": audio_in,
            "image_tokens": image_in,
        },
        "output_tokens_details" if responses else "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": audio_out,
        },
    }
    expected = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        audio_input_tokens=audio_in,
        image_input_tokens=image_in,
        reasoning_tokens=reasoning,
        audio_output_tokens=audio_out,
    )
    return usage, expected


@FUZZ
@given(_valid_usage())
def test_valid_usage_reads_exactly(case: tuple[dict[str, Any], Usage]) -> None:
    usage, expected = case
    assert parse_usage(usage) == expected
    assert extract_usage("chat", {}, {"usage": usage}) == expected


_BAD_COUNTS = st.sampled_from([-1, -5_000_000, MAX_TOKENS + 1, 2**63, 1.0, float("nan"), "1", True, [], {}])


@FUZZ
@given(_valid_usage(), st.data())
def test_one_bad_count_makes_the_whole_usage_estimated(
    case: tuple[dict[str, Any], Usage], data: st.DataObject
) -> None:
    usage, _ = case
    paths: list[tuple[str, ...]] = [(k,) for k in usage if k != "total_tokens"]
    paths += [(k, d) for k, v in usage.items() if isinstance(v, dict) for d in v]
    path = data.draw(st.sampled_from(paths))
    bad = data.draw(_BAD_COUNTS)
    if bad == {} and path[-1].endswith("details"):
        bad = -1  # an empty details object is valid
    target: dict[str, Any] = usage
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    assert parse_usage(usage) == Usage(estimated=True)
    assert extract_usage("embeddings", {}, {"usage": usage}).estimated


@FUZZ
@given(_FAMILIES, _JSONISH, _JSONISH, st.none() | st.decimals(0, 1000, places=3), st.booleans())
def test_extract_usage_never_raises_and_stays_in_bounds(
    family: str, request: Any, response: Any, seconds: Decimal | None, token_priced: bool
) -> None:
    fields = request if isinstance(request, dict) else {}
    usage = extract_usage(
        family, fields, response, file_seconds=seconds, output_seconds=seconds, token_priced=token_priced
    )
    _assert_bounded(usage)
    if family in ("chat", "completions", "responses", "embeddings"):
        reported = reported_usage(response)
        assert usage.estimated == (reported is None or reported.estimated)
        assert usage == (
            reported if reported is not None and not reported.estimated else Usage(estimated=True)
        )


# --- streams --------------------------------------------------------------------------------

_EVENT_BODIES = (
    _JSONISH.map(json.dumps)
    | _valid_usage().map(lambda case: json.dumps({"choices": [], "usage": case[0]}))
    | st.sampled_from(
        [
            "[DONE]",
            "",
            "not json",
            "[" * 2000,
            '{"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 2}}}',
            '{"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "abcd"}}]}}]}',
            '{"type": "response.output_audio.delta", "delta": "AAAA"}',
        ]
    )
)


@FUZZ
@given(
    st.sampled_from(["chat", "completions", "responses", "speech", "transcription"]),
    st.lists(
        st.tuples(st.none() | st.sampled_from(["response.completed", "message"]), _EVENT_BODIES), max_size=12
    ),
    st.booleans(),
)
def test_stream_meter_never_raises_and_finishing_is_final(
    family: str, bodies: list[tuple[str | None, str]], hide: bool
) -> None:
    meter = StreamUsage(family, {"input": "hello"}, hide_usage_chunk=hide)
    was_finished = False
    for name, data in bodies:
        forwarded = meter.on_message(SseMessage(raw=data.encode(), event=name, data=data))
        assert forwarded or (hide and meter.usage is not None)
        assert meter.finished or not was_finished
        was_finished = meter.finished
        if data == "[DONE]":
            assert meter.finished
    final = meter.final_usage()
    _assert_bounded(final)
    if not meter.finished:
        assert final.estimated


# --- multipart ------------------------------------------------------------------------------

_BOUNDARY = "fuzzb0undary"
_FORM_PIECES = st.sampled_from(
    [
        f"--{_BOUNDARY}".encode(),
        f"\r\n--{_BOUNDARY}\r\n".encode(),
        f"\r\n--{_BOUNDARY}--".encode(),
        b"\r\n",
        b"\r\n\r\n",
        b'Content-Disposition: form-data; name="file"; filename="a.wav"',
        b'Content-Disposition: form-data; name="model"',
        b"Content-Disposition: form-data; name*=x; filename*=utf-8''%FF",
        b"Content-Type: text/plain; charset=punycode",
        b'; name="',
        b"\\",
        b"x",
    ]
)


@FUZZ
@given(st.lists(_FORM_PIECES | st.binary(max_size=6), max_size=40).map(b"".join))
def test_parse_form_raises_nothing_but_value_error(body: bytes) -> None:
    try:
        form = parse_form(f'multipart/form-data; boundary="{_BOUNDARY}"', body)
    except ValueError:
        return
    assert all(isinstance(v, str) for v in form.fields.values())
    assert all(isinstance(name, str) and isinstance(data, bytes) for name, data in form.files.values())


@FUZZ
@given(st.text(max_size=80), st.binary(max_size=40))
def test_parse_form_on_any_content_type_raises_nothing_but_value_error(
    content_type: str, body: bytes
) -> None:
    try:
        parse_form(content_type, body)
    except ValueError:
        pass


_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_[]0123456789-", min_size=1, max_size=12).filter(
    lambda name: not name.endswith("[]")
)
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@FUZZ
@given(
    st.dictionaries(_NAMES, _TEXT, max_size=6),
    st.dictionaries(
        _NAMES,
        st.tuples(_TEXT.filter(lambda n: n and '"' not in n), st.binary(max_size=200)),
        min_size=1,
        max_size=3,
    ),
)
def test_a_form_built_by_httpx_reads_back(
    fields: dict[str, str], files: dict[str, tuple[str, bytes]]
) -> None:
    """What the SDK's HTTP client encodes, fields and files, comes back byte for byte."""
    fields = {name: value for name, value in fields.items() if name not in files}
    request = httpx.Request(
        "POST",
        "http://upstream.test/v1/audio/transcriptions",
        data=fields,
        files={
            name: (filename, data, "application/octet-stream") for name, (filename, data) in files.items()
        },
    )
    form = parse_form(request.headers["content-type"], request.read())
    assert form.fields == fields
    assert form.files == _httpx_filenames(files)


def _httpx_filenames(files: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, bytes]]:
    # httpx percent-encodes control characters in a filename and escapes a backslash
    # (as browsers do); the form reports what was sent.
    def sent(filename: str) -> str:
        return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 and c != "\x1b" else c for c in filename)

    return {name: (sent(filename), data) for name, (filename, data) in files.items()}
