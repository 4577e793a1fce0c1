"""Every error taximeter answers with, in OpenAI's shape.

    TaximeterError                    (500 server_error)
    ├── InvalidApiKey                 401 invalid_request_error / invalid_api_key
    ├── AdminAuthRequired             401/403 invalid_request_error / admin_unauthorized
    ├── BudgetExceeded                429 insufficient_quota / budget_exceeded
    │   └── BudgetBusy                429 the same, retryable: calls in flight hold the rest
    ├── ModelNotPriced                400 invalid_request_error / model_not_priced
    ├── EndpointNotMetered            404 invalid_request_error / endpoint_not_metered
    ├── MethodNotAllowed              405 invalid_request_error / method_not_allowed (with Allow)
    ├── RequestTooLarge               413 invalid_request_error / request_too_large
    ├── InvalidJson                   400 invalid_request_error / invalid_json
    ├── InvalidInput                  400/422 invalid_request_error / invalid_value (param names the field)
    ├── NotFoundError                 404 invalid_request_error / not_found
    ├── ConflictError                 409 invalid_request_error / conflict
    ├── UpstreamUnavailable           502 upstream_error / upstream_unavailable
    ├── UpstreamTimeout               504 upstream_error / upstream_timeout
    └── MeteringUnavailable           503 server_error / metering_unavailable

Handlers raise these; one middleware renders them as JSON, for the root app
and the admin sub-app (``middleware.json_error_middleware``), and the
dashboard sub-app's renders them as pages. Nothing below the HTTP layer
raises an aiohttp exception; those aiohttp raises itself (no route, a method
the route lacks, a body over ``client_max_size``) are turned into these by
``middleware.from_aiohttp``, so every error of an app has the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar

from taximeter.pricing.limits import retry_after_s
from taximeter.pricing.models import Hold

__all__ = [
    "AdminAuthRequired",
    "BudgetBusy",
    "BudgetExceeded",
    "ConflictError",
    "EndpointNotMetered",
    "InvalidApiKey",
    "InvalidInput",
    "InvalidJson",
    "LimitReached",
    "LinkExpired",
    "MeteringUnavailable",
    "MethodNotAllowed",
    "ModelNotAllowed",
    "ModelNotPriced",
    "NotFoundError",
    "RequestTooLarge",
    "TaximeterError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class TaximeterError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidApiKey(TaximeterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class AdminAuthRequired(TaximeterError):
    status = 401
    type = "invalid_request_error"
    code = "admin_unauthorized"


class BudgetExceeded(TaximeterError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    reason = "limit"  # token_limit, cost_limit, manual or reserved: the rejections metric label

    def headers(self) -> dict[str, str]:
        # The OpenAI SDKs retry 429s unless told not to; a spent budget won't refill in seconds.
        return {"x-should-retry": "false"}


class BudgetBusy(BudgetExceeded):
    """The limit is filled only by reservations of calls still in flight: it
    may well have room once they settle, so the SDK is told to retry."""

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "true", "retry-after-ms": "500"}


class ModelNotPriced(TaximeterError):
    status = 400
    type = "invalid_request_error"
    code = "model_not_priced"


class LimitReached(TaximeterError):
    """A limit beside the budget (section 6b) refused the call: a spend cap of
    a day or longer as a spent budget is, a rate, request or concurrency
    limit as OpenAI's own rate limits are, with when to retry."""

    status = 429

    def __init__(self, hold: Hold, *, busy: bool, now: datetime) -> None:
        limit = hold.limit
        self.rate = limit.rate
        self.busy = busy
        self.retry_after_s = 1 if busy else retry_after_s(hold, now)
        self.hold = hold
        self.reason = f"limit:{limit.name}"
        what = "is filled by calls in flight" if busy else "is reached"
        window = "" if limit.window == "none" else f" ({limit.window})"
        super().__init__(
            f"limit {limit.name!r}{window} of this client {what}; retry in {self.retry_after_s} s"
            if self.rate or busy
            else f"limit {limit.name!r}{window} of this client is reached; it resets with its window",
            param=limit.name,
        )

    @property
    def type(self) -> str:  # type: ignore[override]
        return "requests" if self.rate else "insufficient_quota"

    @property
    def code(self) -> str:  # type: ignore[override]
        return "rate_limit_exceeded" if self.rate else "budget_exceeded"

    def headers(self) -> dict[str, str]:
        if not (self.rate or self.busy):
            return {"x-should-retry": "false"}
        headers = {"x-should-retry": "true", "retry-after": str(self.retry_after_s)}
        metric = self.hold.limit.metric
        if metric in ("requests", "tokens") and self.rate:  # the headers OpenAI sends with its own limits
            headers |= {
                f"x-ratelimit-limit-{metric}": str(self.hold.limit.limit),
                f"x-ratelimit-remaining-{metric}": "0",
                f"x-ratelimit-reset-{metric}": f"{self.retry_after_s}s",
            }
        return headers


class ModelNotAllowed(TaximeterError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class EndpointNotMetered(TaximeterError):
    status = 404
    type = "invalid_request_error"
    code = "endpoint_not_metered"


class MethodNotAllowed(TaximeterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.allowed = sorted(allowed)

    def headers(self) -> dict[str, str]:
        return {"Allow": ",".join(self.allowed)}  # as aiohttp writes it (RFC 9110: required on a 405)


class RequestTooLarge(TaximeterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class InvalidJson(TaximeterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_json"


class InvalidInput(TaximeterError):
    status = 422
    type = "invalid_request_error"
    code = "invalid_value"


class NotFoundError(TaximeterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class LinkExpired(TaximeterError):
    status = 410
    type = "invalid_request_error"
    code = "link_expired"


class ConflictError(TaximeterError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class UpstreamUnavailable(TaximeterError):
    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(TaximeterError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class MeteringUnavailable(TaximeterError):
    status = 503
    type = "server_error"
    code = "metering_unavailable"
