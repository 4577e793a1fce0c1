"""Hostile upstreams and clients against the pure parsers (SSE, usage, multipart).

Every case in the attack sections failed before this change: events lost, usage
read as zero or negative, a stream settled on its first chunk, a parser crash,
or a form read differently from the upstream. The last section pins what must
keep working (the official SDK's own bodies, honest usage, RFC details of
multipart) so the hardening does not break them; those passed before too,
except that a repeated array field (``name[]``) now keeps its first value.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from taximeter.pricing.extract import MAX_TOKENS, extract_usage, parse_usage
from taximeter.pricing.sse import SseMessage, SseSplitter
from taximeter.pricing.stream_usage import StreamUsage
from taximeter.pricing.usage import Usage
from taximeter.proxy.gateway.forms import MAX_PART_HEADER_BYTES, MAX_PARTS, parse_form

# --- SSE: line ends, separators, chunking, memory ------------------------------------------


def _split(*chunks: bytes, max_event_bytes: int = 8 * 1024 * 1024) -> tuple[list[SseMessage], bytes]:
    splitter = SseSplitter(max_event_bytes=max_event_bytes)
    events = [e for chunk in chunks for e in splitter.feed(chunk)]
    return events + splitter.end(), splitter.rest()


@pytest.mark.parametrize(
    "stream",
    [
        b"data: 1\r\rdata: 2\r\r",  # CR-only line ends
        b"data: 1\r\n\ndata: 2\n\r\n",  # mixed CRLF and LF
        b"data: 1\n\rdata: 2\r\r\n",  # mixed LF, CR and CRLF
    ],
)
def test_events_ending_with_any_blank_line_are_found(stream: bytes) -> None:
    """An upstream ending lines with CR (or mixing CR, LF, CRLF) had all its events, and usage, lost."""
    events, rest = _split(stream)
    assert [e.data for e in events] == ["1", "2"]
    assert b"".join(e.raw for e in events) == stream and rest == b""


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_unicode_line_separator_inside_json_does_not_cut_the_data_line(separator: str) -> None:
    """str.splitlines() cut a JSON data line at U+2028, U+0085 and friends: the usage chunk was unreadable."""
    body = {"choices": [{"delta": {"content": f"a{separator}b"}}], "usage": {"prompt_tokens": 3}}
    raw = b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
    [event], _ = _split(raw)
    assert json.loads(event.data) == body


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    """A blank line ending in CR at a chunk's end, its LF in the next chunk: one event, the LF in it."""
    events, rest = _split(b"data: 1\r\r", b"\ndata: 2\r\n\r\n")
    assert [(e.raw, e.data) for e in events] == [(b"data: 1\r\r\n", "1"), (b"data: 2\r\n\r\n", "2")]
    assert rest == b""


def test_the_last_event_of_a_cr_only_stream_is_read_at_its_end() -> None:
    """A final event ending in CR is held back (it may be half a CRLF) and handed over by end()."""
    splitter = SseSplitter()
    assert splitter.feed(b'data: {"x": 1}\r\r') == []
    [event] = splitter.end()
    assert (event.raw, event.data, splitter.rest()) == (b'data: {"x": 1}\r\r', '{"x": 1}', b"")


def test_an_endless_event_does_not_grow_the_buffer() -> None:
    """One event with no blank line, ever: the buffer stays under the cap and every byte is handed back."""
    splitter = SseSplitter(max_event_bytes=4096)
    chunk = b"data: " + b"x" * 994
    events = [e for _ in range(100) for e in splitter.feed(chunk)]
    assert len(splitter.rest()) <= 4096
    assert all(len(e.raw) == 4096 and (e.event, e.data) == (None, "") for e in events)
    assert b"".join(e.raw for e in events) + splitter.rest() == chunk * 100


def test_the_tail_of_an_oversized_event_is_not_read_as_a_new_event() -> None:
    """After the cap, the rest of the oversized event is passed through unread, up to its blank line."""
    events, rest = _split(b"data: " + b"y" * 20 + b'\ndata: {"usage": 1}\n\ndata: 2\n\n', max_event_bytes=16)
    assert [e.data for e in events] == ["", "", "", "2"]
    assert rest == b""


# --- usage numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "usage",
    [
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": -5_000_000},
        },
        {"prompt_tokens": -1, "completion_tokens": 5},
        {"prompt_tokens": 1200.0, "completion_tokens": 5},
        {"prompt_tokens": "1200", "completion_tokens": 5},
        {"prompt_tokens": float("nan"), "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": float("inf")},
        {"prompt_tokens": 2**63, "completion_tokens": 5},
        {"prompt_tokens": MAX_TOKENS + 1, "completion_tokens": 5},
        {"input_tokens": 10, "output_tokens": True},
        {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}},
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 5},
        },
        {"input_tokens": 10, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 6}},
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 3},
        },
        {"input_tokens": 10, "output_tokens": 5, "input_tokens_details": [1, 2]},
        {"total_tokens": 15},
        {"type": "duration", "seconds": -4},
        {"type": "duration", "seconds": float("nan")},
        {"type": "duration", "seconds": float("inf")},
        {"type": "duration", "seconds": 86_400 * 7 + 1},
        {"type": "duration", "seconds": "12"},
        {"type": "duration", "seconds": True},
        {"type": "duration"},
    ],
)
def test_an_untrustworthy_usage_is_estimated_not_free(usage: dict[str, Any]) -> None:
    """Negative, float, string, NaN, huge or inconsistent counts read as zero (or negative) cost before."""
    assert parse_usage(usage) == Usage(estimated=True)


@pytest.mark.parametrize("family", ["chat", "completions", "responses", "embeddings"])
@pytest.mark.parametrize(
    "response",
    [
        None,
        {"choices": [{"message": {"content": "hi"}}]},
        {"object": "list", "data": [], "usage": {"prompt_tokens": -8, "total_tokens": -8}},
        {"usage": {"prompt_tokens": 5, "completion_tokens": "7"}},
    ],
)
def test_a_token_family_without_valid_usage_is_estimated(family: str, response: Any) -> None:
    """A response with no usage (or a bad one) looked exact and cost 0."""
    usage = extract_usage(family, {"input": "x"}, response)
    assert usage.estimated and usage.total_tokens == 0


def test_token_priced_speech_without_measured_audio_is_estimated() -> None:
    """gpt-4o-mini-tts with no usage and no readable output length was charged nothing."""
    for seconds in (None, Decimal(0)):
        usage = extract_usage("speech", {"input": "hello"}, None, output_seconds=seconds, token_priced=True)
        assert usage.estimated and usage.characters == 5
    measured = extract_usage(
        "speech", {"input": "hi"}, None, output_seconds=Decimal("1.5"), token_priced=True
    )
    assert not measured.estimated and measured.audio_seconds == Decimal("1.5")


def test_an_image_response_without_data_or_usage_is_estimated() -> None:
    """An image reply with neither a data list nor token usage counted 0 images, exactly."""
    assert extract_usage("image", {}, {"created": 1}).estimated
    assert extract_usage("image", {}, None).estimated
    assert extract_usage("image", {}, {"data": [{}], "usage": {"input_tokens": -1}}).estimated


def test_a_transcription_duration_must_be_a_sane_number() -> None:
    """A NaN or negative verbose_json duration read as 0 seconds; it now falls back to the file's length."""
    for duration in (-3, float("nan"), 1e300, "8"):
        usage = extract_usage("transcription", {}, {"duration": duration}, file_seconds=Decimal("2.5"))
        assert usage == Usage(audio_seconds=Decimal("2.5"))
    assert extract_usage("transcription", {}, {"duration": -3}).estimated


# --- streams settled too early --------------------------------------------------------------


def _event(body: object, name: str | None = None) -> SseMessage:
    data = body if isinstance(body, str) else json.dumps(body)
    return SseMessage(raw=b"data: " + data.encode() + b"\n\n", event=name, data=data)


def _chunk(text: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "delta": {"content": text}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def test_cumulative_usage_in_every_chunk_does_not_finish_the_stream() -> None:
    """vLLM continuous_usage_stats: the call was settled on its first chunk's few tokens."""
    meter = StreamUsage("chat", {}, hide_usage_chunk=False)
    for n in range(1, 6):
        assert meter.on_message(_event(_chunk("tok", 10, n)))
        assert not meter.finished and meter.usage == Usage(input_tokens=10, output_tokens=n)
    meter.on_message(_event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}))
    assert meter.finished and meter.final_usage() == Usage(input_tokens=10, output_tokens=5)


def test_done_finishes_a_stream_that_reported_usage_in_its_chunks() -> None:
    """Without a usage-only chunk, [DONE] ends the stream: the latest cumulative usage is exact."""
    meter = StreamUsage("completions", {}, hide_usage_chunk=False)
    for n in (1, 2, 3):
        meter.on_message(
            _event({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 4, "completion_tokens": n}})
        )
    finished_before_done = meter.finished
    meter.on_message(_event("[DONE]"))
    assert not finished_before_done and meter.finished
    assert meter.final_usage() == Usage(input_tokens=4, output_tokens=3)


def test_a_stream_cut_after_cumulative_usage_is_a_flagged_lower_bound() -> None:
    """A cut stream's latest cumulative usage was taken as exact."""
    meter = StreamUsage("chat", {}, hide_usage_chunk=False)
    for n in (1, 2, 3):
        meter.on_message(_event(_chunk("t", 10, n)))
    assert meter.final_usage() == Usage(input_tokens=10, output_tokens=3, estimated=True)


def test_a_cut_stream_charges_the_delivered_text_when_it_exceeds_the_reported_usage() -> None:
    """An upstream that reports 1 output token while delivering 400 characters."""
    meter = StreamUsage("chat", {"messages": [{"role": "user", "content": "q" * 8}]}, hide_usage_chunk=False)
    meter.on_message(_event(_chunk("a" * 400, 2, 1)))
    assert meter.final_usage() == Usage(input_tokens=2, output_tokens=100, estimated=True)


def test_an_invalid_terminal_usage_is_not_read_as_zero() -> None:
    """A final usage chunk with a negative count was charged as reported."""
    meter = StreamUsage("chat", {}, hide_usage_chunk=False)
    meter.on_message(_event(_chunk("b" * 40, 3, 10)))
    meter.on_message(_event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": -10}}))
    assert meter.finished
    assert meter.final_usage() == Usage(input_tokens=3, output_tokens=10, estimated=True)


@pytest.mark.parametrize("kind", ["response.completed", "response.incomplete", "response.failed"])
def test_the_responses_api_finishes_at_its_terminal_event(kind: str) -> None:
    """Responses API usage lives at response.usage of its terminal event, and only there."""
    meter = StreamUsage("responses", {}, hide_usage_chunk=False)
    meter.on_message(_event({"type": "response.created", "response": {"usage": None}}, "response.created"))
    meter.on_message(_event({"type": "response.output_text.delta", "delta": "hi"}))
    finished_before = meter.finished
    usage = {"input_tokens": 7, "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 1}}
    meter.on_message(_event({"type": kind, "response": {"usage": usage}}, kind))
    assert not finished_before and meter.finished
    assert meter.final_usage() == Usage(input_tokens=7, output_tokens=2, reasoning_tokens=1)


@pytest.mark.parametrize(
    "body",
    [
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "a" * 400}}]}}]},
        {"choices": [{"delta": {"reasoning_content": "a" * 400}}]},
        {"choices": [{"delta": {"reasoning": "a" * 400}}]},
        {"choices": [{"delta": {"function_call": {"arguments": "a" * 400}}}]},
    ],
)
def test_tool_call_and_reasoning_deltas_count_towards_a_cut_stream(body: dict[str, Any]) -> None:
    """A stream of tool-call arguments or reasoning, cut before its usage, was estimated at ~0 output."""
    meter = StreamUsage("chat", {}, hide_usage_chunk=True)
    meter.on_message(_event(body))
    assert meter.final_usage() == Usage(output_tokens=100, estimated=True)


def test_deeply_nested_event_data_is_ignored_not_a_crash() -> None:
    """json.loads raised RecursionError (not ValueError) on deep nesting and broke the relay."""
    meter = StreamUsage("chat", {}, hide_usage_chunk=True)
    assert meter.on_message(_event("[" * 100_000))
    assert meter.usage is None and not meter.finished


# --- multipart ------------------------------------------------------------------------------


def _form(*parts: tuple[str, bytes], boundary: str = "XyZ") -> tuple[str, bytes]:
    body = b"".join(
        f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n" for headers, content in parts
    )
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


def _field(name: str, value: bytes) -> tuple[str, bytes]:
    return f'Content-Disposition: form-data; name="{name}"', value


def _file(name: str, filename: str, data: bytes) -> tuple[str, bytes]:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: audio/wav',
        data,
    )


def test_a_second_file_part_is_refused() -> None:
    """Two `file` parts: the last one won, so a client metered a short file and sent a long one."""
    with pytest.raises(ValueError, match="duplicate file field 'file'"):
        parse_form(*_form(_file("file", "short.wav", b"1"), _file("file", "long.wav", b"1" * 1000)))


def test_a_repeated_text_field_is_refused() -> None:
    """Two `model` fields: the proxy priced one model while the upstream might run the other."""
    with pytest.raises(ValueError, match="duplicate field 'model'"):
        parse_form(*_form(_field("model", b"whisper-1"), _field("model", b"gpt-4o-transcribe")))


def test_a_field_that_is_also_a_file_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate file field 'file'"):
        parse_form(*_form(_field("file", b"x"), _file("file", "a.wav", b"RIFF")))


def test_too_many_parts_are_refused() -> None:
    """Thousands of tiny parts took the stdlib parser seconds to minutes, on the event loop."""
    parts = [_field(f"f{i}", b"x") for i in range(MAX_PARTS + 1)]
    with pytest.raises(ValueError, match=f"more than {MAX_PARTS} parts"):
        parse_form(*_form(*parts))


def test_an_oversized_part_header_block_is_refused() -> None:
    header = 'Content-Disposition: form-data; name="model"\r\nX-Pad: ' + "p" * MAX_PART_HEADER_BYTES
    with pytest.raises(ValueError, match="headers exceed"):
        parse_form(*_form((header, b"whisper-1")))


def test_a_repeated_disposition_parameter_is_refused() -> None:
    """`name="model"; name="file"`: two parsers can disagree on which one counts."""
    with pytest.raises(ValueError, match="repeated parameter 'name'"):
        parse_form(*_form(('Content-Disposition: form-data; name="model"; name="file"', b"x")))


def test_a_body_without_its_closing_boundary_is_refused() -> None:
    content_type, body = _form(_file("file", "a.wav", b"RIFF"))
    with pytest.raises(ValueError, match="closing boundary"):
        parse_form(content_type, body.removesuffix(b"--XyZ--\r\n"))


def test_a_content_type_that_only_starts_like_form_data_is_refused() -> None:
    with pytest.raises(ValueError, match="expected multipart/form-data"):
        parse_form("multipart/form-datax; boundary=XyZ", _form(_field("model", b"m"))[1])


@pytest.mark.parametrize("charset", ["punycode", "idna", "zlib", "unicode_escape", "no-such-charset"])
def test_a_client_named_charset_only_selects_text_codecs(charset: str) -> None:
    """charset=punycode decoded a field in quadratic time; other codecs are not text or reject "replace"."""
    body = (
        (
            f'--XyZ\r\nContent-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset={charset}'
            "\r\n\r\n"
        ).encode()
        + "é \\x41".encode()
        + b"\r\n--XyZ--\r\n"
    )
    assert parse_form("multipart/form-data; boundary=XyZ", body).fields == {"prompt": "é \\x41"}


# --- what must keep working -----------------------------------------------------------------


def test_the_official_sdk_transcription_body_parses() -> None:
    """The openai SDK's own multipart body (httpx): fields, array fields, the file and its name."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"text": "ok"})

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://upstream.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    audio = b"RIFF\x00\x00\r\n--\r\n" * 100
    client.audio.transcriptions.create(
        model="whisper-1",
        file=("x.wav", audio, "audio/wav"),
        language="pt",
        response_format="json",
        timestamp_granularities=["word", "segment"],
    )
    [request] = seen
    form = parse_form(request.headers["content-type"], request.read())
    assert form.files == {"file": ("x.wav", audio)}
    assert form.fields == {
        "model": "whisper-1",
        "language": "pt",
        "response_format": "json",
        "timestamp_granularities[]": "word",
    }


@pytest.mark.parametrize(
    ("content_type", "disposition", "filename"),
    [
        ('multipart/form-data; boundary="a;b c"', 'name="file"; filename="x.wav"', "x.wav"),
        ('Multipart/Form-Data; charset=utf-8; BOUNDARY="a;b c"', 'name="file"; filename="x.wav"', "x.wav"),
        ('multipart/form-data; boundary="a;b c"', "name=file; filename*=UTF-8''%C3%A1.wav", "á.wav"),
        (
            'multipart/form-data; boundary="a;b c"',
            'name="file"; filename="x.wav"; filename*=UTF-8\'\'y.wav',
            "x.wav",
        ),
        ('multipart/form-data; boundary="a;b c"', r'name="file"; filename="a\"q\\.wav"', 'a"q\\.wav'),
    ],
)
def test_boundary_and_disposition_parameters_are_parsed(
    content_type: str, disposition: str, filename: str
) -> None:
    body = f"--a;b c\r\nContent-Disposition: form-data; {disposition}\r\n\r\nRIFF\r\n--a;b c--\r\n".encode()
    assert parse_form(content_type, body).files == {"file": (filename, b"RIFF")}


def test_an_unquoted_boundary_ends_at_the_next_parameter() -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--XyZ--\r\n'
    assert parse_form("multipart/form-data;boundary=XyZ ; charset=utf-8", body).fields == {"model": "m"}


def test_preamble_padding_lookalike_delimiters_and_charset() -> None:
    body = (
        b"preamble\r\n--XyZ \t\r\n"
        b'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n'
        b"caf\xe9\r\n--XyZX is content\r\n--XyZ--\r\nepilogue"
    )
    form = parse_form("multipart/form-data; boundary=XyZ", body)
    assert form.fields == {"prompt": "café\r\n--XyZX is content"}


def test_honest_usage_still_reads_exactly() -> None:
    usage = {
        "prompt_tokens": MAX_TOKENS,
        "completion_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": MAX_TOKENS - 2, "audio_tokens": 1, "image_tokens": 1},
    }
    assert parse_usage(usage) == Usage(
        input_tokens=MAX_TOKENS, cached_tokens=MAX_TOKENS - 2, audio_input_tokens=1, image_input_tokens=1
    )
    assert parse_usage({"type": "duration", "seconds": 0}) == Usage()
    assert parse_usage({"type": "duration", "seconds": 8.47}) == Usage(audio_seconds=Decimal("8.47"))
    assert extract_usage("speech", {"input": "Olá"}, None) == Usage(characters=3)
    assert extract_usage("moderation", {}, None) == Usage()
    assert extract_usage("image", {}, {"data": []}) == Usage(image_size="1024x1024")
