"""Settings: sources and precedence, one clear message per bad value, documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from taximeter.proxy.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8787, 1)
    assert settings.database_url == "sqlite:///taximeter.db" and settings.redis_url is None
    assert (settings.currency, str(settings.exchange_rate), settings.unpriced_models) == (
        "BRL",
        "5.0",
        "reject",
    )
    assert settings.max_body_bytes == 25 * 1024 * 1024


def test_flags_beat_env_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        'port = 9001\nhost = "0.0.0.0"\ncurrency = "usd"\n[[upstreams]]\nname = "a"\nbase_url = "http://127.0.0.1:1/v1/"\n'
    )
    monkeypatch.setenv("TAXIMETER_PORT", "9002")
    settings = load_settings(config)
    assert (settings.port, settings.host, settings.currency) == (9002, "0.0.0.0", "USD")
    assert settings.resolved_upstreams()[0].base_url == "http://127.0.0.1:1/v1"
    assert load_settings(config, port=9003).port == 9003
    monkeypatch.setenv("TAXIMETER_CONFIG", str(config))
    assert load_settings().host == "0.0.0.0"


def test_upstream_key_from_env_var_stays_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    config = tmp_path / "t.toml"
    config.write_text(
        '[[upstreams]]\nname = "a"\nbase_url = "https://x.example/v1"\napi_key_env = "MY_KEY"\n'
    )
    settings = load_settings(config)
    assert settings.upstreams[0].api_key is not None
    assert settings.upstreams[0].api_key.get_secret_value() == "sk-secret-123"
    assert "sk-secret-123" not in repr(settings) and "sk-secret-123" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TAXIMETER_PORT": "70000"}, "invalid setting 'port'"),
        ({"TAXIMETER_DATABASE_URL": "mysql://x"}, "invalid setting 'database_url'"),
        ({"TAXIMETER_UPSTREAM_URL": "ftp://x"}, "invalid setting 'upstream_url'"),
        ({"TAXIMETER_REDIS_URL": "localhost:6379"}, "invalid setting 'redis_url'"),
        ({"TAXIMETER_EXCHANGE_RATE": "-1"}, "invalid setting 'exchange_rate'"),
        ({"TAXIMETER_TIMEZONE": "Mars/Base"}, "invalid setting 'timezone'"),
        ({"TAXIMETER_UNPRICED_MODELS": "maybe"}, "invalid setting 'unpriced_models'"),
        ({"TAXIMETER_CURRENCY": "REAL"}, "invalid setting 'currency'"),
        ({"TAXIMETER_PORTT": "1"}, "invalid setting 'TAXIMETER_PORTT': unknown setting"),
        ({"TAXIMETER_WORKERS": "2"}, "workers > 1 needs redis_url"),
        ({"TAXIMETER_REDIS_PREFIX": "my prefix {x}:"}, "invalid setting 'redis_prefix'"),
        ({"TAXIMETER_PASSTHROUGH_PATHS": '["/v1/vector_stores"]'}, "where tenants' objects are kept"),
        ({"TAXIMETER_PASSTHROUGH_PATHS": '["/v1/files/"]'}, "where tenants' objects are kept"),
        ({"TAXIMETER_PASSTHROUGH_PATHS": '["/v1/chat/completions/x"]'}, "where tenants' objects are kept"),
    ],
)
def test_bad_setting_names_itself(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings()


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("port = \n")
    with pytest.raises(ConfigError, match="config"):
        load_settings(broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="invalid setting 'prot'"):
        load_settings(unknown)


def test_every_setting_is_documented_and_in_the_example_config() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "config" / "taximeter.example.toml").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`{name}`" in readme, f"{name} is missing from README's settings table"
        if name != "config":
            assert re.search(rf"^#?\s*\[*{name}\b", example, re.M), (
                f"{name} is missing from the example config"
            )


def test_example_config_loads() -> None:
    settings = load_settings(ROOT / "config" / "taximeter.example.toml")
    assert settings.port == 8787


def test_two_export_sinks_of_one_name_are_refused(tmp_path: Path) -> None:
    """What a sink is owed is kept by its name: two of one name would share it, and one would miss events."""
    config = tmp_path / "t.toml"
    sink = '[[exports]]\nname = "om"\nurl = "https://a.example/events"\nsecret = "s"\n'
    config.write_text(sink + sink.replace("a.example", "b.example"))
    with pytest.raises(ConfigError, match="a name of its own"):
        load_settings(config)
