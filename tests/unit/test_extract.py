"""Usage extraction, pure: one case per API family and shape."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from taximeter.pricing.extract import (
    estimate_tokens,
    extract_usage,
    has_image_part,
    parse_usage,
    reported_usage,
)
from taximeter.pricing.sse import SseSplitter
from taximeter.pricing.stream_usage import StreamUsage
from taximeter.pricing.usage import ToolImage, Usage
from taximeter.proxy.gateway.forms import parse_form


def test_chat_usage_with_details() -> None:
    usage = parse_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 30, "audio_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 8},
        }
    )
    assert usage == Usage(
        input_tokens=100,
        output_tokens=40,
        cached_tokens=30,
        audio_input_tokens=5,
        reasoning_tokens=12,
        audio_output_tokens=8,
    )


def test_responses_and_image_and_transcription_usage_shapes() -> None:
    assert parse_usage(
        {
            "input_tokens": 9,
            "output_tokens": 3,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens_details": {"reasoning_tokens": 1},
        }
    ) == Usage(input_tokens=9, output_tokens=3, cached_tokens=2, reasoning_tokens=1)
    assert parse_usage(
        {
            "input_tokens": 50,
            "output_tokens": 4160,
            "input_tokens_details": {"text_tokens": 30, "image_tokens": 20},
        }
    ) == Usage(input_tokens=50, output_tokens=4160, image_input_tokens=20)
    assert parse_usage(
        {
            "type": "tokens",
            "input_tokens": 720,
            "input_token_details": {"audio_tokens": 700, "text_tokens": 20},
            "output_tokens": 100,
        }
    ) == Usage(input_tokens=720, output_tokens=100, audio_input_tokens=700)
    assert parse_usage({"type": "duration", "seconds": 12.5}) == Usage(audio_seconds=Decimal("12.5"))
    assert parse_usage(None) is None and parse_usage("x") is None


def test_garbage_numbers_never_read_as_an_exact_zero() -> None:
    # A count that cannot be trusted is flagged, so the call is charged as reserved.
    assert parse_usage({"prompt_tokens": "12", "completion_tokens": True}) == Usage(estimated=True)
    assert parse_usage({"type": "duration", "seconds": -4}) == Usage(estimated=True)


def test_speech_counts_characters_of_the_input() -> None:
    usage = extract_usage("speech", {"model": "tts-1", "input": "Olá, mundo"}, None)
    assert usage.characters == 10 and not usage.has_tokens


def test_transcription_falls_back_from_usage_to_duration_to_file() -> None:
    assert (
        extract_usage(
            "transcription", {}, {"text": "x", "usage": {"type": "duration", "seconds": 3}}
        ).audio_seconds
        == 3
    )
    assert extract_usage("transcription", {}, {"text": "x", "duration": 8.47}).audio_seconds == Decimal(
        "8.47"
    )
    assert extract_usage("transcription", {}, None, file_seconds=Decimal("2.5")).audio_seconds == Decimal(
        "2.5"
    )
    assert extract_usage("transcription", {}, None).estimated


def test_images_count_size_quality_or_tokens() -> None:
    usage = extract_usage("image", {"size": "1024x1792", "quality": "hd"}, {"data": [{}, {}]})
    assert (usage.images, usage.image_size, usage.image_quality, usage.has_tokens) == (
        2,
        "1024x1792",
        "hd",
        False,
    )
    tokens = extract_usage("image", {}, {"data": [{}], "usage": {"input_tokens": 5, "output_tokens": 10}})
    assert (tokens.images, tokens.total_tokens, tokens.image_size) == (1, 15, "1024x1024")


def test_an_image_response_says_what_it_made() -> None:
    """gpt-image models answer with the quality and size they chose ("auto"): those price the image."""
    said = {"data": [{}], "quality": "medium", "size": "1536x1024"}
    usage = extract_usage("image", {"quality": "auto"}, said)
    assert (usage.image_quality, usage.image_size) == ("medium", "1536x1024")
    odd = extract_usage("image", {"quality": "hd"}, {"data": [{}], "quality": ["x"], "size": "1" * 99})
    assert (odd.image_quality, odd.image_size) == ("hd", "1024x1024")


def test_image_tool_calls_are_read_from_a_streamed_responses_end() -> None:
    end = {
        "type": "response.completed",
        "response": {
            "tools": [{"type": "web_search"}, {"type": "image_generation", "model": "gpt-image-1-mini"}],
            "output": [
                {"type": "image_generation_call", "id": "ig_1", "quality": "low", "size": "1024x1024"},
                {"type": "image_generation_call", "id": "ig_2", "size": {"bad": 1}},
                {"type": "web_search_call", "id": "ws_1"},
            ],
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    }
    usage = reported_usage(end)
    assert usage is not None
    assert usage.tool_images == (
        ToolImage("gpt-image-1-mini", "low", "1024x1024"),
        ToolImage("gpt-image-1-mini", None, None),
    )
    assert usage.tool_calls == {"image_generation": 2, "web_search": 1}


def test_vision_means_an_image_part() -> None:
    assert has_image_part(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    )
    assert has_image_part(
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}
    )
    assert not has_image_part({"messages": [{"role": "user", "content": "just text"}]})
    assert not has_image_part({"input": "text"})


def _events(*bodies: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(b).encode() + b"\n\n" for b in bodies)
    return out + (b"data: [DONE]\n\n" if done else b"")


def test_stream_meter_hides_only_the_injected_usage_chunk() -> None:
    usage_chunk = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    content = {"choices": [{"delta": {"content": "hi"}}], "usage": None}
    stream = _events(content, usage_chunk)
    splitter, meter = SseSplitter(), StreamUsage("chat", {}, hide_usage_chunk=True)
    kept = b"".join(
        e.raw for e in splitter.feed(stream[:7]) + splitter.feed(stream[7:]) if meter.on_message(e)
    )
    assert kept == _events(content)
    assert meter.final_usage() == Usage(input_tokens=10, output_tokens=2)
    keeping = StreamUsage("chat", {}, hide_usage_chunk=False)
    assert all(keeping.on_message(e) for e in SseSplitter().feed(stream))


def test_stream_without_usage_is_estimated_from_what_was_delivered() -> None:
    meter = StreamUsage("chat", {"messages": [{"role": "user", "content": "x" * 41}]}, hide_usage_chunk=True)
    for event in SseSplitter().feed(_events({"choices": [{"delta": {"content": "abcdefgh"}}]}, done=False)):
        meter.on_message(event)
    assert meter.final_usage() == Usage(input_tokens=11, output_tokens=2, estimated=True)
    assert estimate_tokens("") == 0


def test_sse_splitter_keeps_bytes_and_handles_crlf_and_partial_events() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"event: a\r\ndata: 1\r\n\r\ndata: 2") and splitter.rest() == b"data: 2"
    [event] = splitter.feed(b"\n\n")
    assert (event.raw, event.data, event.event) == (b"data: 2\n\n", "2", None)


def test_multipart_form_fields_and_files() -> None:
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + b"\x00\x01RIFF\r\n--not-the-end"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    form = parse_form(f"multipart/form-data; boundary={boundary}", body)
    assert form.fields == {"model": "whisper-1"}
    assert form.files["file"] == ("a.wav", b"\x00\x01RIFF\r\n--not-the-end")


@pytest.mark.parametrize(
    ("tools", "tool"),
    [
        ([{"type": "web_search_preview"}], "web_search_preview"),
        ([{"type": "web_search_preview_2025_03_11"}], "web_search_preview"),
        ([{"type": "web_search"}], "web_search"),
        ([{"type": "web_search"}, {"type": "web_search_preview"}], "web_search"),
        (None, "web_search"),
        ("junk", "web_search"),
    ],
)
def test_searches_are_named_by_the_search_tool_the_response_echoes(tools: object, tool: str) -> None:
    """web_search_preview costs $25 / 1K calls on gpt-4o and gpt-4.1, web_search $10: the echo decides."""
    body = {
        "tools": tools,
        "output": [{"type": "web_search_call"}],
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    usage = reported_usage(body)
    assert usage is not None and usage.tool_calls == {tool: 1}
