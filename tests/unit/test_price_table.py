"""One row per (model family x unit x tier x tool): the expected cost is
worked out here by hand from the public list price (cited with its date),
never read from the catalog code.

Sources (checked 2026-11-25): P = developers.openai.com/api/docs/pricing
(the copy of 2026-06-27: standard, batch, flex and priority tables, "Built-in
tools"); M = the model's page at developers.openai.com/api/docs/models/<model>;
G = genai-prices 0.2.3 (verified against P on 2026-10-12/14), which agrees.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from taximeter.pricing.catalog import load_catalog
from taximeter.pricing.extract import extract_usage
from taximeter.pricing.money import quantize
from taximeter.pricing.usage import Usage

CATALOG = load_catalog(today=date(2026, 11, 25))
M = Decimal(1_000_000)
D = Decimal

ROWS = [
    # gpt-5.5 standard (P): $5 in, $0.50 cached, $30 out per 1M.
    (
        "gpt-5.5",
        Usage(input_tokens=10_000, cached_tokens=2_000, output_tokens=1_000),
        (8_000 * 5 + 2_000 * D("0.5") + 1_000 * 30) / M,
    ),
    # gpt-5.5 flex (P, flex table): $2.50 / $0.25 / $15.
    (
        "gpt-5.5",
        Usage(input_tokens=10_000, cached_tokens=2_000, output_tokens=1_000, service_tier="flex"),
        (8_000 * D("2.5") + 2_000 * D("0.25") + 1_000 * 15) / M,
    ),
    # gpt-5.5 priority (P, priority table): $12.50 / $1.25 / $75.
    (
        "gpt-5.5",
        Usage(input_tokens=10_000, cached_tokens=2_000, output_tokens=1_000, service_tier="priority"),
        (8_000 * D("12.5") + 2_000 * D("1.25") + 1_000 * 75) / M,
    ),
    # gpt-5.5, 300k prompt (> 272K): the whole call at 2x input and cached, 1.5x output: $10 / $1 / $45 (P, M).
    (
        "gpt-5.5",
        Usage(input_tokens=300_000, cached_tokens=100_000, output_tokens=2_000),
        (200_000 * 10 + 100_000 * 1 + 2_000 * 45) / M,
    ),
    # ... and flex past 272K: 2 x $2.50, 2 x $0.25, 1.5 x $15.
    (
        "gpt-5.5",
        Usage(input_tokens=300_000, output_tokens=2_000, service_tier="flex"),
        (300_000 * 5 + 2_000 * D("22.5")) / M,
    ),
    # Exactly 272,000 input tokens is not past the threshold.
    ("gpt-5.5", Usage(input_tokens=272_000, output_tokens=0), 272_000 * 5 / M),
    # A tier the response names but the model is not sold in (default, scale): standard.
    (
        "gpt-5.5",
        Usage(input_tokens=1_000, output_tokens=1_000, service_tier="default"),
        (1_000 * 5 + 1_000 * 30) / M,
    ),
    # gpt-5.5-pro (P): $30 in, $180 out; no cached rate, so cached input is input.
    (
        "gpt-5.5-pro",
        Usage(input_tokens=1_000, cached_tokens=500, output_tokens=1_000),
        (1_000 * 30 + 1_000 * 180) / M,
    ),
    # gpt-5.5-pro batch (P): $15 / $90.
    (
        "gpt-5.5-pro",
        Usage(input_tokens=1_000, output_tokens=1_000, service_tier="batch"),
        (1_000 * 15 + 1_000 * 90) / M,
    ),
    # gpt-5-pro (P): $15 / $120.
    ("gpt-5-pro", Usage(input_tokens=2_000, output_tokens=500), (2_000 * 15 + 500 * 120) / M),
    # gpt-4o-2024-05-13 (P): $5 / $15, not gpt-4o's $2.50 / $10.
    ("gpt-4o-2024-05-13", Usage(input_tokens=1_000, output_tokens=1_000), (1_000 * 5 + 1_000 * 15) / M),
    # gpt-4o priority (P): $4.25 / $2.125 / $17.
    (
        "gpt-4o",
        Usage(input_tokens=1_000, cached_tokens=1_000, output_tokens=100, service_tier="priority"),
        (1_000 * D("2.125") + 100 * 17) / M,
    ),
    # o3 flex (P): $1 / $0.25 / $4.
    (
        "o3",
        Usage(
            input_tokens=4_000,
            cached_tokens=1_000,
            output_tokens=3_000,
            reasoning_tokens=2_500,
            service_tier="flex",
        ),
        (3_000 * 1 + 1_000 * D("0.25") + 3_000 * 4) / M,
    ),
    # web_search x3 on gpt-5 (P, built-in tools): $10 / 1K calls, plus the tokens at gpt-5's $1.25 / $10.
    (
        "gpt-5",
        Usage(input_tokens=1_000, output_tokens=100, tool_calls={"web_search": 3}),
        (1_000 * D("1.25") + 100 * 10) / M + 3 * D("0.01"),
    ),
    # web_search_preview on a non-reasoning model (P, "Web search preview (non-reasoning models)"):
    # $25 / 1K calls on gpt-4o ($2.50 / $10) ...
    (
        "gpt-4o",
        Usage(input_tokens=1_000, output_tokens=100, tool_calls={"web_search_preview": 2}),
        (1_000 * D("2.5") + 100 * 10) / M + 2 * D("0.025"),
    ),
    # ... and on a reasoning model the same $10 / 1K as web_search (gpt-5).
    (
        "gpt-5",
        Usage(input_tokens=1_000, output_tokens=100, tool_calls={"web_search_preview": 1}),
        (1_000 * D("1.25") + 100 * 10) / M + D("0.01"),
    ),
    # gpt-4o's own preview fee leaves the file-wide ones: web_search $10 / 1K.
    ("gpt-4o", Usage(input_tokens=1_000, tool_calls={"web_search": 1}), 1_000 * D("2.5") / M + D("0.01")),
    # file_search (P): $2.50 / 1K calls, on gpt-4.1 ($2 / $8).
    (
        "gpt-4.1",
        Usage(input_tokens=500, output_tokens=50, tool_calls={"file_search": 1}),
        (500 * 2 + 50 * 8) / M + D("0.0025"),
    ),
    # gpt-image-1 (M): text in $5, image in $10, image out $40 per 1M tokens.
    (
        "gpt-image-1",
        Usage(input_tokens=300, image_input_tokens=200, output_tokens=4_160),
        (100 * 5 + 200 * 10 + 4_160 * 40) / M,
    ),
    # gpt-4o-mini-tts by tokens (M): $0.60 per 1M text in, $12 per 1M audio out.
    (
        "gpt-4o-mini-tts",
        Usage(input_tokens=100, output_tokens=2_000, audio_output_tokens=2_000),
        (100 * D("0.6") + 2_000 * 12) / M,
    ),
    # ... and by audio length when no tokens are reported: $0.015 / minute (pricing page estimate).
    ("gpt-4o-mini-tts", Usage(audio_seconds=D(90)), D("0.015") * D("1.5")),
    # tts-1 (M): $15 per 1M characters.
    ("tts-1", Usage(characters=1_234), 1_234 * 15 / M),
    # whisper-1 (M): $0.006 / minute.
    ("whisper-1", Usage(audio_seconds=D("61.5")), D("0.006") * D("61.5") / 60),
    # gpt-4o-transcribe by tokens: text in $2.50, out $10, audio in $6.00 (P, "Transcription
    # and speech generation"; the model page's $2.50 is its text rate).
    (
        "gpt-4o-transcribe",
        Usage(input_tokens=1_000, audio_input_tokens=900, output_tokens=200),
        (100 * D("2.5") + 900 * 6 + 200 * 10) / M,
    ),
    # dall-e-3 with no quality or size: the API's default, standard 1024x1024, $0.04 (P), not hd's $0.12.
    ("dall-e-3", Usage(images=2), 2 * D("0.04")),
    ("dall-e-3", Usage(images=1, image_quality="hd", image_size="1792x1024"), D("0.12")),
    # gpt-3.5-turbo-instruct: $1.50 / $2.00 (the API price as quoted by llmreference.com, 2026-05-22).
    (
        "gpt-3.5-turbo-instruct",
        Usage(input_tokens=1_000, output_tokens=1_000),
        (1_000 * D("1.5") + 1_000 * 2) / M,
    ),
]


@pytest.mark.parametrize(("model", "usage", "expected"), ROWS)
def test_list_price(model: str, usage: Usage, expected: Decimal) -> None:
    price = CATALOG.resolve(model)
    assert price is not None, model
    assert price.cost_usd(usage) == quantize(expected)


def test_dall_e_3_without_quality_is_standard_end_to_end() -> None:
    """Before: no ``quality`` was priced as the dearest listed option, $0.12."""
    usage = extract_usage("image", {"model": "dall-e-3", "prompt": "a cat"}, {"data": [{"url": "u"}]})
    assert CATALOG.resolve("dall-e-3").cost_usd(usage) == quantize(D("0.04"))  # type: ignore[union-attr]


def test_tier_and_tools_are_read_from_the_response() -> None:
    body = {
        "object": "response",
        "service_tier": "flex",
        "output": [{"type": "web_search_call"}, {"type": "message"}, {"type": "web_search_call"}],
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    usage = extract_usage("responses", {}, body)
    assert (usage.service_tier, dict(usage.tool_calls)) == ("flex", {"web_search": 2})
    weird = extract_usage(
        "chat", {}, {"service_tier": "x" * 500, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    )
    assert weird.service_tier == "unknown"  # an upstream's text never lands in the ledger unbounded


def test_pricing_check_warns_of_models_past_their_shutdown() -> None:
    from datetime import date

    from taximeter.pricing.catalog import warnings

    notes = warnings(CATALOG, date(2026, 11, 25))
    assert "dall-e-3: shut down upstream on 2026-05-12 (prices.toml)" in notes
    assert not any(n.startswith("gpt-5.5:") for n in notes)
    assert not any(n.startswith("gpt-5:") for n in notes)  # until 2026-12-11
    assert any(n.startswith("gpt-5:") for n in warnings(CATALOG, date(2026, 12, 11)))


def test_litellm_fields_are_read_or_the_model_refused_by_name() -> None:
    from taximeter.pricing.catalog_files import parse_litellm

    text = json.dumps(
        {
            "gpt-image-1": {
                "mode": "image_generation",
                "input_cost_per_token": 5e-06,
                "input_cost_per_image_token": 1e-05,
                "output_cost_per_image_token": 4e-05,
            },
            "gpt-5.5": {
                "mode": "chat",
                "input_cost_per_token": 5e-06,
                "output_cost_per_token": 3e-05,
                "input_cost_per_token_flex": 2.5e-06,
                "output_cost_per_token_flex": 1.5e-05,
                "input_cost_per_token_above_272k_tokens": 1e-05,
                "output_cost_per_token_above_272k_tokens": 4.5e-05,
            },
            "exotic": {"mode": "chat", "input_cost_per_token": 1e-06, "input_cost_per_pixel": 1e-09},
        }
    )
    models, refused = parse_litellm(text, "litellm.json")
    by_name = {m.model: m for m in models}
    # Before: image output tokens were dropped, so gpt-image-1 output was free.
    image = by_name["gpt-image-1"].cost_usd(
        Usage(input_tokens=100, output_tokens=1_000, image_output_tokens=1_000)
    )
    assert image == quantize((100 * 5 + 1_000 * 40) / M)
    flex = by_name["gpt-5.5"].cost_usd(Usage(input_tokens=1_000, output_tokens=100, service_tier="flex"))
    assert flex == quantize((1_000 * D("2.5") + 100 * 15) / M)
    long = by_name["gpt-5.5"].cost_usd(Usage(input_tokens=300_000, output_tokens=100))
    assert long == quantize((300_000 * 10 + 100 * 45) / M)
    assert "exotic" not in by_name and refused == [
        "litellm.json: exotic: input_cost_per_pixel is a price taximeter cannot read; price it in TOML"
    ]


def test_a_priority_request_reserves_at_priority_rates() -> None:
    from taximeter.pricing.estimate import estimate_usage

    request = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 1_000}
    standard = estimate_usage("chat", request, default_output_tokens=4096, default_audio_seconds=D(600))
    priority = estimate_usage(
        "chat",
        {**request, "service_tier": "priority"},
        default_output_tokens=4096,
        default_audio_seconds=D(600),
    )
    price = CATALOG.resolve("gpt-5.5")
    assert price is not None
    # gpt-5.5 priority $12.50 / $75 per 1M, standard $5 / $30.
    assert price.cost_usd(priority) == quantize((priority.input_tokens * D("12.5") + 1_000 * 75) / M)
    assert price.cost_usd(standard) == quantize((standard.input_tokens * 5 + 1_000 * 30) / M)


def test_cached_audio_and_image_output_details_are_priced_at_their_rates() -> None:
    from taximeter.pricing.catalog import Catalog
    from taximeter.pricing.catalog_files import parse_toml

    # A realtime-style model (rates as the pricing page lists gpt-realtime's, per 1M):
    # text $4 in, $0.40 cached, $16 out; audio $32 in, $0.40 cached, $64 out.
    toml = (
        '[models."rt"]\napi_type = "chat"\ninput = "4"\ncached_input = "0.40"\noutput = "16"\n'
        'audio_input = "32"\ncached_audio_input = "0.40"\naudio_output = "64"\n'
    )
    price = Catalog(parse_toml(toml, "x")).resolve("rt")
    body = {
        "usage": {
            "input_tokens": 1_000,
            "output_tokens": 500,
            "input_token_details": {
                "cached_tokens": 300,
                "audio_tokens": 600,
                "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 200},
            },
            "output_token_details": {"audio_tokens": 400},
        }
    }
    usage = extract_usage("responses", {}, body)
    assert (usage.cached_audio_tokens, usage.audio_input_tokens, usage.cached_tokens) == (200, 600, 300)
    # text: 1000 - 300 cached - 400 uncached audio = 300 uncached text, 100 cached text;
    # audio: 400 uncached, 200 cached; output: 100 text, 400 audio.
    expected = (300 * 4 + 100 * D("0.4") + 400 * 32 + 200 * D("0.4") + 100 * 16 + 400 * 64) / M
    assert price is not None and price.cost_usd(usage) == quantize(expected)


def test_the_base_catalog_is_read_offline_and_guesses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from taximeter.pricing.genai import load_genai

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    base = load_genai.__wrapped__(date(2026, 11, 25))
    names = {(m.provider, m.model) for m in base.models}
    assert ("groq", "llama-3.3-70b-versatile") in names and ("anthropic", "claude-opus-4-5") in names
    # genai-prices' own lookup prices these by prefix or substring; here they are unpriced.
    for provider, model in (("anthropic", "claude-opus-4-5-anything"), ("openai", "text-moderation-999")):
        assert CATALOG.resolve(model, provider) is None
    # Its units taximeter does not meter leave the model out, by name.
    assert any("input_document_kpages" in r for r in base.refused)


def test_the_base_catalog_prices_as_genai_prices_own_calculator() -> None:
    """Every model of the base catalog, every tier, below and past its context
    threshold: the cost equals what genai-prices' own calculator gives for the
    same usage, or more where the data prices by time of day (the dearer is
    taken)."""
    from datetime import UTC, datetime

    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    from taximeter.pricing.genai import load_genai

    when = datetime(2026, 11, 25, tzinfo=UTC)
    contexts = {"standard": None, "flex": {"service_tier": "flex"}, "priority": {"service_tier": "priority"}}
    contexts["batch"] = {"processing": "batch"}
    compared = dearer = 0
    for model in load_genai(date(2026, 11, 25)).models:
        if model.rates.empty:
            continue
        for tier in model.tiers:
            for prompt in (10_000, 300_000, 600_000):
                usage = Usage(
                    input_tokens=prompt, cached_tokens=prompt // 5, output_tokens=3_000, service_tier=tier
                )
                try:
                    theirs = calc_price(
                        GenaiUsage(input_tokens=prompt, cache_read_tokens=prompt // 5, output_tokens=3_000),
                        model.model,
                        provider_id=model.provider,
                        genai_request_timestamp=when,
                        price_context=contexts[tier],
                    ).total_price
                except LookupError:  # its id is not among the names its own rule matches
                    continue
                ours = model.cost_usd(usage)
                assert ours >= quantize(theirs), (model.provider, model.model, tier, prompt, ours, theirs)
                compared += 1
                dearer += ours > quantize(theirs)
    assert compared > 6_000 and dearer < compared // 50, (compared, dearer)


def test_a_cut_call_is_charged_at_least_its_reservation_at_its_tier() -> None:
    """Before: the floor kept the reserved tokens but not the reserved tier: a
    cut stream of a priority request was charged at standard rates."""
    from taximeter.pricing.estimate import at_least

    reserved = Usage(input_tokens=1_000, output_tokens=4_000, service_tier="priority", estimated=True)
    cut = at_least(Usage(input_tokens=1_000, output_tokens=200, estimated=True), reserved)
    price = CATALOG.resolve("gpt-5.5")
    assert price is not None and cut.service_tier == "priority"
    assert price.cost_usd(cut) == quantize((1_000 * D("12.5") + 4_000 * 75) / M)


@pytest.mark.parametrize(
    "details",
    [
        # cached audio and image parts larger than the cached total
        {"cached_tokens": 10, "audio_tokens": 50, "cached_tokens_details": {"audio_tokens": 40}},
        # a cached audio part larger than the audio total
        {"cached_tokens": 50, "audio_tokens": 10, "cached_tokens_details": {"audio_tokens": 40}},
    ],
)
def test_cached_parts_that_do_not_add_up_are_not_a_count(details: dict[str, object]) -> None:
    usage = extract_usage(
        "chat",
        {},
        {"usage": {"prompt_tokens": 100, "completion_tokens": 1, "prompt_tokens_details": details}},
    )
    assert usage.estimated and usage.input_tokens == 0


def test_cache_writes_are_read_and_priced_at_their_rate() -> None:
    """OpenAI reports cache writes in the input details (the field genai-prices
    reads too); a model that charges them prices them at its cache_write rate."""
    from taximeter.pricing.catalog import Catalog
    from taximeter.pricing.catalog_files import parse_toml

    toml = '[models."w"]\napi_type = "chat"\ninput = "2"\ncached_input = "0.2"\ncache_write = "2.5"\noutput = "8"\n'
    price = Catalog(parse_toml(toml, "x")).resolve("w")
    details = {"cached_tokens": 100, "cache_write_tokens": 300}
    usage = extract_usage(
        "chat",
        {},
        {"usage": {"prompt_tokens": 1_000, "completion_tokens": 10, "prompt_tokens_details": details}},
    )
    assert usage.cache_write_tokens == 300
    # 600 uncached at $2, 100 cached at $0.20, 300 written at $2.50, 10 out at $8.
    assert price is not None and price.cost_usd(usage) == quantize(
        (600 * 2 + 100 * D("0.2") + 300 * D("2.5") + 10 * 8) / M
    )


def test_anthropic_usage_shape_counts_its_cache_as_input() -> None:
    """Anthropic's own usage (passed on by some gateways) leaves cache reads and
    writes out of input_tokens. claude-haiku-4-5 (anthropic.com/pricing, checked
    2026-11-25): $1 in, $0.10 cache read, $1.25 5-minute / $2 1-hour cache write,
    $5 out; the usage does not say which write, so the dearer is charged."""
    body = {
        "usage": {
            "input_tokens": 100,
            "cache_read_input_tokens": 1_000,
            "cache_creation_input_tokens": 500,
            "output_tokens": 50,
        }
    }
    usage = extract_usage("chat", {}, body)
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (1_600, 1_000, 500)
    price = CATALOG.resolve("claude-haiku-4-5", "anthropic")
    assert price is not None
    assert price.cost_usd(usage) == quantize((100 * 1 + 1_000 * D("0.1") + 500 * 2 + 50 * 5) / M)
    # The OpenAI shape with the same fields beside it: prompt_tokens already holds the cache.
    openai_shape = {"usage": {"prompt_tokens": 1_600, "completion_tokens": 50, **body["usage"]}}
    assert extract_usage("chat", {}, openai_shape).input_tokens == 1_600


def test_a_regional_endpoint_carries_the_uplift_on_units_not_on_tool_fees() -> None:
    """Regional processing: +10% for models released on or after 2026-03-05
    (pricing page footnote, checked 2026-11-25); gpt-5.5 was released 2026-04-23,
    gpt-5 (2025-08-07) carries none."""
    usage = Usage(input_tokens=1_000, output_tokens=100, tool_calls={"web_search": 1})
    gpt55 = CATALOG.resolve("gpt-5.5")
    assert gpt55 is not None
    assert gpt55.cost_usd(usage, regional=True) == quantize((1_000 * 5 + 100 * 30) / M * D("1.1") + D("0.01"))
    assert gpt55.cost_usd(usage) == quantize((1_000 * 5 + 100 * 30) / M + D("0.01"))
    gpt5 = CATALOG.resolve("gpt-5")
    assert gpt5 is not None and gpt5.cost_usd(usage, regional=True) == gpt5.cost_usd(usage)
