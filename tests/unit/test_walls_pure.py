"""The pure pieces of the walls: canonical paths, edge labels, estimates, floors.

Expected figures are counted here by hand from the rule each docstring states.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest

from taximeter.pricing.estimate import at_least, estimate_usage, input_tokens
from taximeter.pricing.usage import Usage
from taximeter.proxy.errors import InvalidInput
from taximeter.proxy.gateway.edge import label, refuse_unmetered_options
from taximeter.proxy.gateway.paths import canonical_path, upstream_path


@pytest.mark.parametrize(
    "target",
    [
        "/v1/models/%2e%2e/files",
        "/v1/models/%2E%2e/files",
        "/v1/models/../files",
        "/v1/models/./x",
        "/v1/models/%252e%252e/files",
        "/v1/models/..%2Ffiles",
        "/v1/models/a%2fb",
        "/v1/models/a%5cb",
        "/v1/models/a\\b",
        "/v1//models",
        "/v1/models/",
        "v1/models",
        "/v1/models/%ff",
        "/v1/models/a%00b",
        "/v1/models/a b",
        "/v1/" + "a" * 3000,
    ],
)
def test_non_canonical_paths_are_refused(target: str) -> None:
    assert canonical_path(target) is None


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions?x=1", "/v1/chat/completions"),
        ("/v1/models/ft:gpt-4o-mini:acme::AbC", "/v1/models/ft:gpt-4o-mini:acme::AbC"),
        ("/v1/models/ft%3Agpt-4o%3Aorg", "/v1/models/ft:gpt-4o:org"),
        ("/v1/files/file-1/content", "/v1/files/file-1/content"),
        ("/v1/models/a..b", "/v1/models/a..b"),
    ],
)
def test_canonical_paths_decode_once(target: str, path: str) -> None:
    assert canonical_path(target) == path
    assert upstream_path(path) == path  # nothing in these needs quoting again


@pytest.mark.parametrize(
    "value", ["gpt-4o\n", "a\x00", "a\x7f", "a\x85", "a\u2028", "\ud800", "m" * 257, 5, ["x"]]
)
def test_labels_refuse_what_could_forge_a_line_or_poison_a_row(value: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        label(value, "model")
    assert caught.value.param == "model" and caught.value.status == 400


def test_labels_pass_plain_text_and_absence() -> None:
    assert label("João da Silva ☎ 55-11", "user") == "João da Silva ☎ 55-11"
    assert label(None, "user") is None and label("", "user") is None
    with pytest.raises(InvalidInput):
        label(None, "model", required=True)


@pytest.mark.parametrize(
    ("family", "fields", "param"),
    [
        ("chat", {"stream": "true"}, "stream"),
        ("chat", {"stream": 1}, "stream"),
        ("chat", {"stream": True, "stream_options": "yes"}, "stream_options"),
        ("responses", {"background": True, "stream": True}, "stream"),
        ("responses", {"background": "true"}, "background"),
    ],
)
def test_options_taximeter_could_not_meter_are_refused(
    family: str, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        refuse_unmetered_options(family, fields)
    assert caught.value.param == param


def test_options_that_are_metered_pass() -> None:
    refuse_unmetered_options("chat", {"stream": True, "stream_options": {"include_usage": True}})
    refuse_unmetered_options("responses", {"background": False})
    # Multipart fields are text: the SDK streams a transcription with stream=true.
    refuse_unmetered_options("transcription", {"stream": "true"}, form=True)
    with pytest.raises(InvalidInput):
        refuse_unmetered_options("transcription", {"stream": "yes"}, form=True)


def estimate(family: str, request: dict[str, Any], unseen: int = 0) -> Usage:
    return estimate_usage(
        family,
        request,
        default_output_tokens=4096,
        default_audio_seconds=Decimal(600),
        unseen_input_tokens=unseen,
    )


def four(*strings: str) -> int:
    return sum(math.ceil(len(s) / 4) for s in strings)


def test_nested_token_arrays_count_each_token() -> None:
    request = {"model": "text-embedding-3-small", "input": [[1] * 3000, [2] * 500]}
    assert estimate("embeddings", request).input_tokens == 3500


def test_every_string_of_a_chat_request_counts() -> None:
    tool = {"type": "function", "function": {"name": "lookup", "description": "d" * 400, "parameters": {}}}
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool],
        "max_tokens": 10,
    }
    usage = estimate("chat", request)
    assert usage.input_tokens == four("gpt-4o", "user", "hi", "function", "lookup", "d" * 400)
    assert usage.output_tokens == 10


def test_files_audio_and_images_are_counted_by_their_own_rule() -> None:
    pdf = "A" * 40_000  # base64 of 30,000 bytes
    audio = "B" * 80_000  # base64 of 60,000 bytes
    parts = [
        {"type": "input_file", "file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "C" * 100_000}},
    ]
    request = {"model": "gpt-4o", "input": [{"role": "user", "content": parts}], "max_output_tokens": 5}
    usage = estimate("responses", request, unseen=32_000)
    strings = four(
        "gpt-4o", "user", "input_file", "a.pdf", "file", "file-abc", "input_audio", "wav", "image_url"
    )
    expected = strings + 30_000 // 4 + 32_000 + math.ceil(60_000 / 800) + 1_105
    assert usage.input_tokens == expected


def test_stored_context_is_reserved_as_unseen_input() -> None:
    base = {"model": "gpt-4o", "input": "and then?"}
    plain = estimate("responses", base, unseen=32_000).input_tokens
    assert estimate("responses", {**base, "previous_response_id": "resp_1"}, unseen=32_000).input_tokens == (
        plain + four("resp_1") + 32_000
    )
    assert estimate("responses", {**base, "conversation": "conv_1"}, unseen=32_000).input_tokens == (
        plain + four("conv_1") + 32_000
    )


def test_output_bounds_are_capped() -> None:
    request = {"model": "gpt-4o", "n": 10**9, "max_tokens": 10**12}
    usage = estimate("chat", request)
    assert usage.output_tokens == 128 * 1_000_000
    assert estimate("image", {"n": 10**6}).images == 10


def test_input_tokens_of_scalars() -> None:
    assert input_tokens("abcd" * 10, 0) == 10
    assert input_tokens([1, 2, True, "ab"], 0) == 3  # two token ids (a bool is not one) and a string


def test_a_lost_count_is_raised_to_the_reservation() -> None:
    reserved = Usage(
        input_tokens=100, output_tokens=500, audio_seconds=Decimal(10), images=2, image_size="1024x1024"
    )
    seen = Usage(input_tokens=120, output_tokens=8, cached_tokens=20)
    floor = at_least(seen, reserved)
    assert (floor.input_tokens, floor.output_tokens, floor.cached_tokens) == (120, 500, 20)
    assert (floor.audio_seconds, floor.images, floor.image_size, floor.estimated) == (
        Decimal(10),
        2,
        "1024x1024",
        True,
    )
