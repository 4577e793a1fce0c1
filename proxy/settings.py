"""Settings: one object, built once, passed down.

Sources, strongest first: CLI flags, ``TAXIMETER_*`` environment variables,
the TOML file (``--config`` or ``TAXIMETER_CONFIG``), defaults. Unknown keys
and bad values stop start-up with one message naming the setting.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from taximeter.proxy.gateway.paths import canonical_path

__all__ = [
    "ClientDeclaration",
    "ConfigError",
    "Settings",
    "UpstreamSettings",
    "WebhookSettings",
    "load_settings",
]

MiB = 1024 * 1024
# An origin a CSP frame-ancestors list may name (a subdomain wildcard allowed): no
# space, quote or semicolon can reach the header.
_ORIGIN = re.compile(r"https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?")
# The address of this server: an origin, perhaps with a path prefix (behind a proxy).
_PUBLIC_URL = re.compile(r"https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting."""


class UpstreamSettings(BaseModel):
    """One upstream provider and the models it serves."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Label for logs and metrics.")
    base_url: str = Field(description="Base URL including /v1, e.g. https://api.openai.com/v1.")
    api_key: SecretStr | None = Field(None, description="Key sent upstream.")
    api_key_env: str | None = Field(None, description="Name of an env var holding the key instead.")
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Glob patterns of model names this upstream serves; first match wins.",
    )
    provider: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Whose prices price its calls (openai, anthropic, groq, deepseek, mistral, google, "
        "together, ...); inferred from base_url when unset, openai when the address is unknown.",
    )
    regional: bool = Field(
        False,
        description="A regional-processing (data residency) endpoint: calls carry the model's "
        "regional uplift where the catalog states one.",
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _key_from_env(self) -> UpstreamSettings:
        self.api_key = self.api_key or _secret_from_env("api_key_env", self.api_key_env)
        return self


class ClientDeclaration(BaseModel):
    """A client (and its budget) declared in an ops file, for ``taximeter apply``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The client's slug.")
    name: str | None = Field(None, description="Display name; the id when absent.")
    budget: dict[str, Any] | None = Field(None, description="As PUT /admin/budgets/{id} takes it.")
    limits: list[dict[str, Any]] | None = Field(
        None, description="As PUT /admin/clients/{id}/limits takes them; left out: left as they are."
    )


class WebhookSettings(BaseModel):
    """A receiver of budget events (thresholds crossed, pauses, resets)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Where events are POSTed as JSON.")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of X-Taximeter-Signature.")
    secret_env: str | None = Field(None, description="Name of an env var holding the secret instead.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _secret_from_env(self) -> WebhookSettings:
        self.secret = self.secret or _secret_from_env("secret_env", self.secret_env)
        if self.secret is None:
            raise ValueError("a webhook needs a secret (or secret_env) to sign its events")
        return self


class ExportSettings(WebhookSettings):
    """A billing sink (OpenMeter, a warehouse loader): every ledger event is
    POSTed to it as a CloudEvent, in batches, signed like webhooks."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Its name, kept with what it is owed."
    )
    batch_size: int = Field(100, ge=1, le=1000, description="Most events in one POST.")


# APIs whose objects belong to one tenant (files, stored responses, vector
# stores...): never a pass-through path, whose calls no one checks.
TENANT_OBJECT_PATHS = (
    "/v1/files",
    "/v1/uploads",
    "/v1/batches",
    "/v1/responses",
    "/v1/chat",
    "/v1/conversations",
    "/v1/vector_stores",
    "/v1/containers",
    "/v1/realtime",
    "/v1/assistants",
    "/v1/threads",
    "/v1/fine_tuning",
    "/v1/evals",
)


def _overlap(path: str, held: str) -> bool:
    """Whether a pass-through prefix covers part of ``held`` (or the reverse)."""
    return path == held or path.startswith(held + "/") or held.startswith(path + "/")


class Settings(BaseSettings):
    """Every setting of a taximeter process. See README for the table."""

    model_config = SettingsConfigDict(env_prefix="TAXIMETER_", extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="TOML file the settings were read from.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8787, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes sharing the port.")
    header_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "A connection must send a request's complete headers within this long of opening,"
            " or of its previous response; an idle kept-alive connection is closed after it too."
        ),
    )
    upstream_url: str = Field("https://api.openai.com/v1", description="Default upstream base URL.")
    upstream_api_key: SecretStr | None = Field(None, description="Real key sent upstream; never shown.")
    upstreams: list[UpstreamSettings] = Field(
        default_factory=list, description="Several upstreams with model routing (TOML)."
    )
    upstream_timeout_s: float = Field(600.0, gt=0, description="Longest an upstream call may take.")
    upstream_connect_timeout_s: float = Field(10.0, gt=0, description="Longest to wait to connect upstream.")
    database_url: str = Field("sqlite:///taximeter.db", description="postgresql://... or sqlite:///path.")
    redis_url: str | None = Field(None, description="redis://...; none = in-process gate (one process).")
    redis_cluster: bool = Field(
        False,
        description="redis_url names a node of a Redis Cluster: keys are laid out by client hash slot.",
    )
    redis_prefix: str = Field(
        "taximeter:",
        pattern=r"^[A-Za-z0-9_.:-]{0,64}$",  # no space (the scripts split on it) and no brace (hash tags)
        description="Prefix of every Redis key taximeter writes.",
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token of the admin API and dashboard.")
    dashboard_session_s: float = Field(
        8 * 3600.0, gt=0, description="How long a dashboard login lasts (the cookie expires with it)."
    )
    locale: str | None = Field(
        None,
        description=(
            "Language and number format of the dashboard and portal (pt_BR, en_US...);"
            " none = the browser's Accept-Language, else the one usual for the currency."
        ),
    )
    portal_frame_ancestors: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Origins allowed to frame the tenant portal (https://app.example.com); none = no one.",
    )
    public_url: str | None = Field(
        None,
        description=(
            "Address clients reach taximeter at (https://meter.example.com), the base of portal links;"
            " none = the address the admin request came to."
        ),
    )
    currency: str = Field("BRL", description="Budget currency (ISO 4217 code).")
    exchange_rate: Decimal = Field(Decimal("5.0"), gt=0, description="Units of the currency per 1 USD.")
    timezone: str = Field("UTC", description="Default timezone of budget periods.")
    unpriced_models: Literal["reject", "allow"] = Field(
        "reject", description="reject: 400 model_not_priced; allow: record at cost 0, flagged."
    )
    max_body_bytes: int = Field(25 * MiB, gt=0, description="Larger request bodies get 413.")
    max_file_bytes: int = Field(
        512 * MiB, gt=0, description="Larger file uploads (POST /v1/files, streamed through) get 413."
    )
    max_response_bytes: int = Field(
        64 * MiB,
        gt=0,
        description="Larger non-streamed upstream bodies are not relayed: 502, charged the estimate.",
    )
    pricing_files: list[Path] = Field(
        default_factory=list, description="Extra catalogs (TOML or LiteLLM JSON) over the shipped one."
    )
    passthrough_paths: list[str] = Field(
        default_factory=list,
        description="Unmetered /v1 paths forwarded anyway (none where tenants keep objects).",
    )
    key_cache_s: float = Field(
        2.0,
        ge=0,
        description="Longest a process trusts a key it looked up when no change is announced.",
    )
    gate_refresh_s: float = Field(
        2.0, gt=0, description="In-process gate: reload a budget this often when no change is announced."
    )
    reserve_output_tokens: int = Field(
        4096, gt=0, description="Output tokens reserved for a call that sets no max_tokens."
    )
    reserve_input_tokens: int = Field(
        32_000,
        gt=0,
        description="Input tokens reserved for input a request names but does not carry "
        "(previous_response_id, conversation, a file by id).",
    )
    reserve_audio_seconds: Decimal = Field(
        Decimal(600), gt=0, description="Audio seconds reserved for an upload whose length cannot be read."
    )
    reservation_grace_s: float = Field(
        60.0, gt=0, description="A reservation expires this long after upstream_timeout_s."
    )
    sweep_interval_s: float = Field(
        5.0, gt=0, description="How often expired reservations are charged and periods rolled."
    )
    watch_check_s: float = Field(
        30.0,
        gt=0,
        description="First look upstream at a running batch or background response; each next look "
        "waits twice as long.",
    )
    watch_check_max_s: float = Field(
        600.0, gt=0, description="Longest wait between two looks at a running batch or background response."
    )
    watch_hold_s: float = Field(
        48 * 3600.0,
        gt=0,
        description="A batch's or background response's reservation is charged at its estimate if no "
        "process has looked at it for this long (each look holds it this long again).",
    )
    ledger_max_pending: int = Field(10_000, gt=0, description="Events held in memory before back-pressure.")
    ledger_retention_months: int | None = Field(
        None,
        ge=1,
        le=1200,
        description="Keep the events of this many whole UTC months before the current one; older "
        "ones are dropped once a day (on Postgres, a month's partition at a time). The daily totals "
        "the reports read are kept. None: keep every event.",
    )
    ledger_drain_s: float = Field(
        25.0,
        gt=0,
        description="At shutdown, longest to wait for the store to take the events still in memory.",
    )
    clients: list[ClientDeclaration] = Field(
        default_factory=list, description="Clients and budgets applied by `taximeter apply` (TOML)."
    )
    webhooks: list[WebhookSettings] = Field(
        default_factory=list, description="Receivers of budget events (TOML): url and secret."
    )
    exports: list[ExportSettings] = Field(
        default_factory=list, description="Billing sinks (TOML): name, url, secret; each gets every event."
    )

    @field_validator("exports")
    @classmethod
    def _sinks_named_once(cls, value: list[ExportSettings]) -> list[ExportSettings]:
        names = [sink.name for sink in value]
        if len(set(names)) != len(names):
            raise ValueError("each export sink needs a name of its own (what it is owed is kept by name)")
        return value

    webhook_timeout_s: float = Field(10.0, gt=0, description="Longest a webhook delivery may take.")
    webhook_retry_max_s: float = Field(
        300.0, gt=0, description="Longest wait between two delivery attempts (backoff doubles to it)."
    )
    metrics_token: SecretStr | None = Field(None, description="Bearer token /metrics asks for; none = open.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="Write logs as JSON lines.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("upstream_url")
    @classmethod
    def _upstream_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
            return value
        raise ValueError("must be postgresql://... or sqlite:///path")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be redis://, rediss:// or unix://")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if len(value) != 3 or not value.isalpha():
            raise ValueError("must be a three-letter ISO 4217 code such as BRL")
        return value.upper()

    @field_validator("portal_frame_ancestors")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _PUBLIC_URL.fullmatch(value):
            raise ValueError(f"{value!r} is not an address such as https://meter.example.com")
        return value.rstrip("/")

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            return str(babel.Locale.parse(value.replace("-", "_")))
        except (ValueError, babel.UnknownLocaleError) as exc:
            raise ValueError(f"unknown locale {value!r} (e.g. pt_BR, en_US)") from exc

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value

    @field_validator("passthrough_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/v1/"):
                raise ValueError(f"{path!r} must start with /v1/")
            if canonical_path(path.rstrip("/")) != path.rstrip("/"):
                raise ValueError(f"{path!r} must be a plain path: no dot segments, escapes or empty segments")
            held = [p for p in TENANT_OBJECT_PATHS if _overlap(path.rstrip("/"), p)]
            if held:
                raise ValueError(
                    f"{path!r} reaches {held[0]}, where tenants' objects are kept: forwarded as is, "
                    "one tenant could read or use another's"
                )
        return value

    @model_validator(mode="after")
    def _single_process_gate(self) -> Settings:
        if self.workers > 1 and self.redis_url is None:
            raise ValueError(
                "workers > 1 needs redis_url: the in-process budget gate cannot be shared between processes"
            )
        return self

    def resolved_upstreams(self) -> list[UpstreamSettings]:
        """The configured upstreams, or one built from upstream_url/upstream_api_key."""
        if self.upstreams:
            return self.upstreams
        return [
            UpstreamSettings(
                name="default",
                base_url=self.upstream_url,
                api_key=self.upstream_api_key,
                api_key_env=None,
                provider=None,
                regional=False,
            )
        ]


def _secret_from_env(field: str, name: str | None) -> SecretStr | None:
    """The secret held by the env var ``name`` (a setting's ``*_env`` field)."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"{field} names {name}, which is not set")
    return SecretStr(value)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``), env and the TOML file.

    Raises ConfigError with one line naming the first bad setting.
    """
    path = config or (Path(os.environ["TAXIMETER_CONFIG"]) if os.environ.get("TAXIMETER_CONFIG") else None)
    flags = {k: v for k, v in overrides.items() if v is not None}
    if path is not None and not path.is_file():
        raise ConfigError(f"config: cannot read {path}")
    for name in os.environ:
        # A typo in an env var would otherwise be silently ignored.
        if name.startswith("TAXIMETER_") and name[10:].lower() not in Settings.model_fields:
            raise ConfigError(f"invalid setting {name!r}: unknown setting")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        settings = FileSettings(**flags, config=path) if path else Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from exc
    except ValueError as exc:  # a TOML syntax error
        raise ConfigError(f"config: {path}: {exc}") from exc
    return settings


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    extra = f" ({exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    where = f"invalid setting {name!r}" if name else "invalid settings"
    return f"{where}: {message}{extra}"
