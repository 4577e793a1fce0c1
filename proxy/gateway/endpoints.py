"""Which paths are proxied, how their bodies are read and what they meter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from taximeter.pricing.usage import Family

__all__ = ["ENDPOINTS", "BodyKind", "Endpoint", "find_endpoint"]


# How a request body is read: parsed JSON, a multipart form, none, or relayed raw.
BodyKind = Literal["json", "multipart", "none", "raw"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    family: Family  # how usage is read
    api_type: str  # what it is billed as (chat may become vision per request)
    body: BodyKind
    method: str = "POST"
    metered: bool = True


ENDPOINTS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint("/v1/chat/completions", "chat", "chat", "json"),
        Endpoint("/v1/completions", "completions", "chat", "json"),
        Endpoint("/v1/responses", "responses", "chat", "json"),
        Endpoint("/v1/embeddings", "embeddings", "embeddings", "json"),
        Endpoint("/v1/audio/speech", "speech", "tts", "json"),
        Endpoint("/v1/audio/transcriptions", "transcription", "whisper", "multipart"),
        Endpoint("/v1/audio/translations", "transcription", "whisper", "multipart"),
        Endpoint("/v1/images/generations", "image", "image", "json"),
        Endpoint("/v1/images/edits", "image", "image", "multipart"),
        Endpoint("/v1/images/variations", "image", "image", "multipart"),
        Endpoint("/v1/moderations", "moderation", "moderation", "json"),
        Endpoint("/v1/models", "models", "none", "none", method="GET", metered=False),
    )
}

# Models a request may omit, defaulted the way the upstream defaults them.
DEFAULT_MODELS = {
    "/v1/images/generations": "dall-e-2",
    "/v1/images/variations": "dall-e-2",
    "/v1/images/edits": "dall-e-2",
    "/v1/moderations": "omni-moderation-latest",
}


def find_endpoint(method: str, path: str, passthrough: list[str]) -> Endpoint | None:
    """The endpoint for a request, or None when the path is not metered."""
    endpoint = ENDPOINTS.get(path)
    if endpoint is not None and endpoint.method == method:
        return endpoint
    if method == "GET" and path.startswith("/v1/models/"):
        return Endpoint(path, "models", "none", "none", method="GET", metered=False)
    if any(path == p or path.startswith(p.rstrip("/") + "/") for p in passthrough):
        return Endpoint(path, "passthrough", "none", "raw", method=method, metered=False)
    return None
