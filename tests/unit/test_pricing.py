"""The catalog, pure: resolution, costs from list prices, currency, loaders."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from taximeter.pricing.catalog import Catalog, CatalogError, load_catalog, problems
from taximeter.pricing.catalog_files import parse_litellm, parse_toml
from taximeter.pricing.money import convert, from_nanos, money_text, parse_money, quantize, to_nanos
from taximeter.pricing.usage import Usage

CATALOG = load_catalog(today=date(2026, 11, 25))
M = Decimal(1_000_000)


@pytest.mark.parametrize(
    ("requested", "resolved"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("text-embedding-3-large", "text-embedding-3-large"),
        # A dated name that is listed is its own model ($5/$15, not gpt-4o's $2.50/$10).
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-5.5-pro", "gpt-5.5-pro"),
        ("gpt-5-pro", "gpt-5-pro"),
        ("o3-deep-research", "o3-deep-research"),
        # Named by the genai-prices base catalog, at their own prices.
        ("o4-mini-deep-research", "o4-mini-deep-research"),
        ("gpt-4.5-preview", "gpt-4.5-preview"),
        # A dated name a catalog lists as a name of its own model is not stripped
        # (before: priced as gpt-3.5-turbo, $0.50 / $1.50 instead of $1.50 / $2.00).
        ("gpt-3.5-turbo-0301", "gpt-3.5-0301"),
    ],
)
def test_resolution_exact_then_undated(requested: str, resolved: str) -> None:
    price = CATALOG.resolve(requested)
    assert price is not None and price.model == resolved


@pytest.mark.parametrize(
    "model",
    # Before: each was priced as the longest listed prefix (gpt-4.1-mini,
    # o4-mini, gpt-5.5, gpt-4o), with no flag: a guess is never a price.
    ["gpt-4.1-mini-custom", "o4-mini-super", "gpt-5.5-ultra", "gpt-4o-x-2024-08-06"],
)
def test_no_prefix_guessing(model: str) -> None:
    assert CATALOG.resolve(model) is None


def test_a_declared_alias_resolves_dated_or_not() -> None:
    catalog = Catalog(
        parse_toml(
            '[models."m"]\napi_type = "chat"\ninput = "1"\noutput = "2"\naliases = ["m-latest"]\n', "x"
        )
    )
    assert catalog.resolve("m-latest").model == "m"  # type: ignore[union-attr]
    assert catalog.resolve("m-latest-2026-01-01").model == "m"  # type: ignore[union-attr]
    assert catalog.resolve("m-lat") is None


def test_unknown_model_resolves_to_nothing() -> None:
    assert CATALOG.resolve("claude-3-opus") is None


@pytest.mark.parametrize(
    ("model", "usage", "expected_usd"),
    [
        # gpt-4o: $2.50 in, $1.25 cached, $10 out per 1M tokens
        (
            "gpt-4o",
            Usage(input_tokens=1000, cached_tokens=400, output_tokens=100),
            (600 * Decimal("2.5") + 400 * Decimal("1.25") + 100 * 10) / M,
        ),
        # gpt-5-nano: $0.05 in, $0.005 cached, $0.40 out
        (
            "gpt-5-nano",
            Usage(input_tokens=7, cached_tokens=3, output_tokens=1),
            (4 * Decimal("0.05") + 3 * Decimal("0.005") + Decimal("0.40")) / M,
        ),
        # o3: reasoning tokens are output tokens at $8
        ("o3", Usage(input_tokens=10, output_tokens=500, reasoning_tokens=450), (10 * 2 + 500 * 8) / M),
        # gpt-4o-audio-preview: audio in $40, audio out $80, text $2.50/$10
        (
            "gpt-4o-audio-preview",
            Usage(input_tokens=100, audio_input_tokens=60, output_tokens=50, audio_output_tokens=40),
            (40 * Decimal("2.5") + 60 * 40 + 10 * 10 + 40 * 80) / M,
        ),
        ("text-embedding-3-small", Usage(input_tokens=5), 5 * Decimal("0.02") / M),
        ("tts-1", Usage(characters=1000), 1000 * Decimal(15) / M),
        ("tts-1-hd", Usage(characters=1000), 1000 * Decimal(30) / M),
        ("whisper-1", Usage(audio_seconds=Decimal(90)), Decimal("0.009")),
        ("dall-e-3", Usage(images=2, image_quality="hd", image_size="1792x1024"), Decimal("0.24")),
        ("dall-e-3", Usage(images=1, image_quality="standard", image_size="1024x1024"), Decimal("0.04")),
        ("dall-e-2", Usage(images=4, image_size="256x256"), Decimal("0.064")),
        # an unlisted size is charged as the dearest listed one, never less
        ("dall-e-3", Usage(images=1, image_quality="ultra", image_size="4096x4096"), Decimal("0.12")),
        (
            "gpt-image-1",
            Usage(input_tokens=50, image_input_tokens=20, output_tokens=1000),
            (30 * 5 + 20 * 10 + 1000 * 40) / M,
        ),
        ("omni-moderation-latest", Usage(input_tokens=100), Decimal(0)),
    ],
)
def test_costs_from_list_prices(model: str, usage: Usage, expected_usd: Decimal) -> None:
    price = CATALOG.resolve(model)
    assert price is not None
    cost = price.cost_usd(usage)
    assert cost == quantize(expected_usd)
    assert cost.as_tuple().exponent == -9


def test_tts_list_prices_are_15_and_30_dollars_per_million_characters() -> None:
    assert CATALOG.resolve("tts-1").per_million_characters == Decimal("15.00")  # type: ignore[union-attr]
    assert CATALOG.resolve("tts-1-hd").per_million_characters == Decimal("30.00")  # type: ignore[union-attr]


def test_pricing_check_finds_missing_prices(tmp_path: Path) -> None:
    assert problems(CATALOG) == []
    bad = Catalog(
        parse_toml(
            '[models."half"]\napi_type = "chat"\ninput = "1"\n[models."mute"]\napi_type = "whisper"\n', "x"
        )
    )
    assert problems(bad) == ["half (chat): no output", "mute (whisper): no per_minute or token rates"]


def test_every_shipped_model_has_the_prices_its_api_type_needs() -> None:
    for price in CATALOG:
        priced = {
            "chat": price.rates.input is not None and price.rates.output is not None,
            "embeddings": price.rates.input is not None,
            "tts": price.per_million_characters is not None or price.rates.output is not None,
            "whisper": price.per_minute is not None,
            "image": bool(price.per_image),
            "moderation": True,
            "storage": bool(price.tool_fees),
        }[price.api_type]
        assert priced, price.model


def test_money_helpers_are_exact() -> None:
    assert to_nanos(Decimal("0.0000000015")) == 2  # half to even: 1.5 -> 2
    assert to_nanos(Decimal("0.0000000025")) == 2  # 2.5 -> 2
    assert from_nanos(123) == Decimal("0.000000123")
    assert convert(Decimal("0.001"), Decimal("5.43")) == Decimal("0.005430000")
    assert parse_money("12.50") == parse_money(12.5) == Decimal("12.5")
    for bad in ("abc", "-1", "NaN", True, None, [1]):
        with pytest.raises(ValueError):
            parse_money(bad)


def test_operator_file_overrides_and_extends(tmp_path: Path) -> None:
    custom = tmp_path / "prices.toml"
    custom.write_text(
        '[models."gpt-4o"]\napi_type = "chat"\ninput = "1.00"\noutput = "2.00"\n\n[models."my-llm"]\napi_type = "chat"\ninput = "0.10"\noutput = "0.20"\n'
    )
    catalog = load_catalog(custom, today=date(2026, 11, 25))
    assert catalog.resolve("gpt-4o").rates.input == Decimal("1.00")  # type: ignore[union-attr]
    assert catalog.resolve("gpt-4o").source == str(custom)  # type: ignore[union-attr]
    assert catalog.resolve("my-llm") is not None and catalog.resolve("my-llm-v2") is None
    assert catalog.resolve("tts-1") is not None  # the rest of the shipped catalog stays


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."x"]\napi_type = "chat"\ninput = 2.5\n', "write prices as strings"),
        ('[models."x"]\napi_type = "chat"\ninput = "-1"\n', "non-negative"),
        ('[models."x"]\napi_type = "nonsense"\n', "api_type"),
        ('[models."x"]\napi_type = "chat"\nprice = "1"\n', "unknown field 'price'"),
        ("models = 3", "no [models] table"),
        ("[models", "prices.toml"),
    ],
)
def test_bad_catalog_names_the_field(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_toml(text, "prices.toml")


def test_litellm_format_prices_like_the_toml_catalog() -> None:
    models, refused = parse_litellm(
        '{"sample_spec": {"mode": "chat"}, "gpt-4o": {"mode": "chat", "input_cost_per_token": 2.5e-06,'
        ' "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai"},'
        ' "tts-1": {"mode": "audio_speech", "input_cost_per_character": 1.5e-05},'
        ' "whisper-1": {"mode": "audio_transcription", "input_cost_per_second": 0.0001}}',
        "litellm.json",
    )
    litellm = Catalog(models)
    assert refused == []
    usage = Usage(input_tokens=1000, cached_tokens=400, output_tokens=100)
    assert litellm.resolve("gpt-4o").cost_usd(usage) == CATALOG.resolve("gpt-4o").cost_usd(usage)  # type: ignore[union-attr]
    assert litellm.resolve("tts-1").cost_usd(Usage(characters=999)) == CATALOG.resolve("tts-1").cost_usd(
        Usage(characters=999)
    )  # type: ignore[union-attr]
    assert litellm.resolve("whisper-1").cost_usd(Usage(audio_seconds=Decimal(61))) == Decimal("0.006100000")  # type: ignore[union-attr]


@pytest.mark.slow  # a fresh interpreter
def test_pricing_package_imports_no_driver() -> None:
    code = "import sys, taximeter.pricing.catalog; print(sorted(m for m in ('aiohttp','asyncpg','redis','sqlite3','aiosqlite') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("5E-7", "0.0000005"),
        ("500.000000000", "500"),
        ("1E+3", "1000"),
        ("12.50", "12.5"),
        ("0E-9", "0"),
        ("-0", "0"),
        ("0.000000001", "0.000000001"),
    ],
)
def test_money_text_is_plain_with_no_exponent_and_no_trailing_zeros(amount: str, text: str) -> None:
    assert money_text(Decimal(amount)) == text
