"""Every endpoint family through the official SDK: exact usage and Decimal cost
recorded (expected costs computed here from list prices), and what the
upstream received."""

from __future__ import annotations

import io
from decimal import Decimal

from tests.support.fake_upstream import (
    CHAT,
    EMBEDDING_TOKENS,
    IMAGE_TOKENS,
    RESPONSES,
    STREAM_PIECES,
    TRANSCRIBE_TOKENS,
    TTS_WAV_SECONDS,
    UPSTREAM_KEY,
    VERBOSE_DURATION,
    WHISPER_SECONDS,
    wav_bytes,
)
from tests.support.harness import Harness

M = Decimal(1_000_000)
RATE = Decimal("5.0")  # the default exchange rate, BRL per USD


def brl(usd: Decimal) -> str:
    return format((usd * RATE).normalize(), "f")


def usd(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


# gpt-4o list prices: $2.50 input, $1.25 cached input, $10.00 output per 1M tokens.
GPT4O_CHAT_USD = (
    (CHAT["prompt"] - CHAT["cached"]) * Decimal("2.50")
    + CHAT["cached"] * Decimal("1.25")
    + CHAT["completion"] * Decimal("10.00")
) / M


async def test_chat_completion_is_metered_and_forwarded_with_the_real_key(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    client = proxy.sdk(key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi"}],
        extra_headers={"X-Taximeter-End-User": "user-7", "X-Taximeter-Conversation": "conv-1"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there!"
    assert completion.usage is not None and completion.usage.prompt_tokens == CHAT["prompt"]
    request_id = raw.headers["x-taximeter-request-id"]

    [sent] = proxy.upstream.received
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert key not in str(sent.headers) and "X-Taximeter-End-User" not in sent.headers

    [event] = await proxy.events("acme")
    assert event["request_id"] == request_id
    assert (event["api_type"], event["model"], event["status"]) == ("chat", "gpt-4o", 200)
    assert (event["input_tokens"], event["output_tokens"]) == (CHAT["prompt"], CHAT["completion"])
    assert (event["cached_tokens"], event["reasoning_tokens"]) == (CHAT["cached"], CHAT["reasoning"])
    assert (event["end_user"], event["conversation"]) == ("user-7", "conv-1")
    assert event["cost_usd"] == usd(GPT4O_CHAT_USD) == "0.00575"
    assert (event["cost"], event["currency"], event["exchange_rate"]) == (brl(GPT4O_CHAT_USD), "BRL", "5")
    assert event["estimated"] is False


async def test_stream_gets_usage_injected_and_hidden_from_the_client(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(STREAM_PIECES)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert all(c.choices for c in chunks), "the injected usage chunk reached the client"

    sent = proxy.upstream.received[0].json()
    assert sent["stream_options"] == {"include_usage": True}
    [event] = await proxy.events("acme")
    # gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per 1M tokens.
    expected = (
        (CHAT["prompt"] - CHAT["cached"]) * Decimal("0.15")
        + CHAT["cached"] * Decimal("0.075")
        + CHAT["completion"] * Decimal("0.60")
    ) / M
    assert event["cost_usd"] == usd(expected)
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (
        CHAT["prompt"],
        CHAT["completion"],
        False,
    )


async def test_stream_keeps_the_usage_chunk_a_client_asked_for(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    stream = await proxy.sdk(key).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == CHAT["completion"]
    [event] = await proxy.events("acme")
    assert event["cost_usd"] == usd(GPT4O_CHAT_USD)


async def test_image_part_makes_a_chat_vision(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    )
    [event] = await proxy.events("acme")
    assert event["api_type"] == "vision" and event["cost_usd"] == usd(GPT4O_CHAT_USD)


async def test_legacy_completions(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    [event] = await proxy.events("acme")
    # gpt-3.5-turbo-instruct, its own price (no longer gpt-3.5-turbo's by prefix):
    # $1.50 input, $2.00 output per 1M tokens (llmreference.com, 2026-05-22).
    assert event["cost_usd"] == usd((12 * Decimal("1.50") + 7 * Decimal("2.00")) / M)


RESPONSES_USD = (
    (RESPONSES["input"] - RESPONSES["cached"]) * Decimal("2.00")
    + RESPONSES["cached"] * Decimal("0.50")
    + RESPONSES["output"] * Decimal("8.00")
) / M  # gpt-4.1: $2.00 input, $0.50 cached, $8.00 output per 1M tokens


async def test_responses_api(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    response = await proxy.sdk(key).responses.create(model="gpt-4.1-2025-04-14", input="Hi")
    assert response.output_text == "Hello there!"
    [event] = await proxy.events("acme")
    assert (
        event["input_tokens"],
        event["output_tokens"],
        event["cached_tokens"],
        event["reasoning_tokens"],
    ) == (RESPONSES["input"], RESPONSES["output"], RESPONSES["cached"], RESPONSES["reasoning"])
    assert event["cost_usd"] == usd(RESPONSES_USD)


async def test_responses_stream_passes_through_and_reads_response_completed(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    stream = await proxy.sdk(key).responses.create(model="gpt-4.1", input="Hi", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == len(STREAM_PIECES)
    assert "stream_options" not in proxy.upstream.received[0].json()
    [event] = await proxy.events("acme")
    assert event["cost_usd"] == usd(RESPONSES_USD) and not event["estimated"]


async def test_embeddings(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    result = await proxy.sdk(key).embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.data[0].embedding == [0.25, -0.5, 0.125]
    [event] = await proxy.events("acme")
    assert (event["api_type"], event["input_tokens"]) == ("embeddings", EMBEDDING_TOKENS)
    assert event["cost_usd"] == usd(EMBEDDING_TOKENS * Decimal("0.02") / M)  # $0.02 per 1M tokens


async def test_tts_is_priced_per_character_and_bytes_pass_through(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    text = "Olá! Seu pedido foi confirmado."
    speech = await proxy.sdk(key).audio.speech.create(model="tts-1-hd", voice="alloy", input=text)
    assert speech.content == b"ID3\x04fake-mp3-frames" * 512
    [event] = await proxy.events("acme")
    assert (event["api_type"], event["characters"]) == ("tts", len(text))
    assert event["cost_usd"] == usd(len(text) * Decimal("30") / M)  # tts-1-hd: $30 per 1M characters


async def test_token_priced_tts_without_usage_is_metered_by_audio_length(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    speech = await proxy.sdk(key).audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input="Hello", response_format="wav"
    )
    assert speech.content == wav_bytes(TTS_WAV_SECONDS)
    [event] = await proxy.events("acme")
    assert Decimal(event["audio_seconds"]) == Decimal(str(TTS_WAV_SECONDS))
    # OpenAI's estimate for gpt-4o-mini-tts: $0.015 per minute.
    assert event["cost_usd"] == usd(Decimal(str(TTS_WAV_SECONDS)) * Decimal("0.015") / 60)


async def test_whisper_seconds_from_the_usage_field(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    result = await proxy.sdk(key).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(1.0))
    )
    assert result.text == "hello world"
    [event] = await proxy.events("acme")
    assert (event["api_type"], Decimal(event["audio_seconds"])) == ("whisper", WHISPER_SECONDS)
    assert event["cost_usd"] == usd(WHISPER_SECONDS * Decimal("0.006") / 60)  # $0.006 per minute


async def test_whisper_duration_of_verbose_json(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(1.0)), response_format="verbose_json"
    )
    [event] = await proxy.events("acme")
    assert Decimal(event["audio_seconds"]) == Decimal(VERBOSE_DURATION)
    assert event["cost_usd"] == usd(Decimal(VERBOSE_DURATION) * Decimal("0.006") / 60)


async def test_whisper_text_reply_falls_back_to_the_uploaded_files_length(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    upload = wav_bytes(3.25, rate=16_000)
    await proxy.sdk(key).audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", io.BytesIO(upload)), response_format="text"
    )
    [received] = proxy.upstream.received
    assert upload in received.body  # the upload reached the upstream byte for byte
    [event] = await proxy.events("acme")
    assert Decimal(event["audio_seconds"]) == Decimal("3.25")
    assert event["cost_usd"] == usd(Decimal("3.25") * Decimal("0.006") / 60)


async def test_translation_without_usage_uses_the_file_length(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).audio.translations.create(model="whisper-1", file=("b.wav", wav_bytes(2.0)))
    [event] = await proxy.events("acme")
    assert (event["endpoint"], Decimal(event["audio_seconds"])) == ("/v1/audio/translations", 2)


async def test_token_priced_transcription(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", wav_bytes(1.0))
    )
    [event] = await proxy.events("acme")
    # gpt-4o-transcribe (pricing page, checked 2026-11-25): audio input $6.00,
    # text input $2.50, output $10.00 per 1M tokens.
    expected = (
        TRANSCRIBE_TOKENS["audio"] * Decimal("6.00")
        + TRANSCRIBE_TOKENS["text"] * Decimal("2.50")
        + TRANSCRIBE_TOKENS["output"] * Decimal("10.00")
    ) / M
    assert event["cost_usd"] == usd(expected)


async def test_dalle3_images_by_count_size_and_quality(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).images.generate(model="dall-e-3", prompt="a cat", size="1024x1792", quality="hd")
    [event] = await proxy.events("acme")
    assert (event["api_type"], event["images"]) == ("image", 1)
    assert event["cost_usd"] == "0.12"  # dall-e-3 HD 1024x1792: $0.120 per image


async def test_dalle2_default_model_and_n(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).images.generate(prompt="a cat", n=3, size="512x512")
    [event] = await proxy.events("acme")
    assert (event["model"], event["images"], event["cost_usd"]) == ("dall-e-2", 3, usd(3 * Decimal("0.018")))


async def test_gpt_image_priced_by_reported_tokens(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).images.generate(model="gpt-image-1", prompt="a cat", quality="high")
    [event] = await proxy.events("acme")
    # gpt-image-1: text input $5.00, image output $40.00 per 1M tokens.
    expected = (IMAGE_TOKENS["text"] * Decimal("5.00") + IMAGE_TOKENS["output"] * Decimal("40.00")) / M
    assert event["cost_usd"] == usd(expected)


async def test_image_edit_multipart(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).images.edit(
        model="dall-e-2", image=("cat.png", b"\x89PNG fake"), prompt="hat", size="256x256"
    )
    [event] = await proxy.events("acme")
    assert (event["endpoint"], event["cost_usd"]) == ("/v1/images/edits", "0.016")


async def test_moderation_is_counted_at_zero_cost(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    await proxy.sdk(key).moderations.create(input="hello")
    [event] = await proxy.events("acme")
    assert (event["api_type"], event["cost_usd"], event["unpriced"]) == ("moderation", "0", False)


async def test_models_list_passes_through_unmetered(proxy: Harness) -> None:
    key = await proxy.new_client("acme")
    models = await proxy.sdk(key).models.list()
    assert [m.id async for m in models] == ["gpt-4o"]
    assert await proxy.events("acme") == []
