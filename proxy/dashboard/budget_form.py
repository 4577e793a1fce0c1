"""The dashboard's budget form: its fields to a budget body and back (pure).

The form is text; the budget rules live in :func:`budgets.config_from_json`.
This only turns text into the JSON types that function takes, naming each
field it cannot read, so every bad field gets its message beside it (this
module's own messages in the page's language; the rules' in English).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from taximeter.pricing import budgets
from taximeter.pricing.models import BudgetState
from taximeter.pricing.money import money_text
from taximeter.proxy.dashboard.formatting import N_

__all__ = ["form_from_state", "parse_budget_form"]

_TEXT_FIELDS = ("mode", "token_limit", "cost_limit", "period", "timezone", "alert_thresholds")


def _integer(text: str) -> int:
    """Digits, optionally grouped by spaces, dots, commas or underscores
    (a token count has no fraction, so any of them is a thousands separator)."""
    digits = text.translate(str.maketrans("", "", " .,_\u00a0"))
    if not digits.isdigit():
        raise ValueError(N_("must be a whole number of tokens"))
    return int(digits)


def _decimal(text: str) -> str:
    """A decimal in either convention: "450.00", "450,00", "1,250.50", "1.250,50"."""
    cleaned = text.replace(" ", "").replace("\u00a0", "")
    if "," in cleaned and "." in cleaned:
        thousands = "." if cleaned.rfind(",") > cleaned.rfind(".") else ","
        cleaned = cleaned.replace(thousands, "")
    cleaned = cleaned.replace(",", ".")
    try:
        if not Decimal(cleaned).is_finite():
            raise ValueError
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(N_("must be an amount such as 450.00")) from exc
    return cleaned


def _thresholds(text: str) -> list[str]:
    """Percents ("80, 90, 100") as the fractions a budget keeps."""
    items = [item for item in text.replace(";", ",").split(",") if item.strip()]
    if not items:
        raise ValueError(N_("list at least one percent, e.g. 80, 90, 100"))
    try:
        return [str(Decimal(item.strip()) / 100) for item in items]
    except InvalidOperation as exc:
        raise ValueError(N_("must be percents separated by commas, e.g. 80, 90, 100")) from exc


def parse_budget_form(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The budget body the form describes, and a message for each field it
    could not read. Empty fields are left out (the budget's defaults apply)."""
    body: dict[str, Any] = {"pause_at_limit": form.get("pause_at_limit") == "on"}
    errors: dict[str, str] = {}
    readers = {"token_limit": _integer, "cost_limit": _decimal, "alert_thresholds": _thresholds}
    for field in _TEXT_FIELDS:
        text = form.get(field, "").strip()
        if not text:
            continue
        reader = readers.get(field)
        try:
            body[field] = reader(text) if reader else text
        except ValueError as exc:
            errors[field] = str(exc)
    mode = body.get("mode")
    # A limit the chosen mode does not use is ignored rather than refused.
    if mode == "tokens":
        body.pop("cost_limit", None)
        errors.pop("cost_limit", None)
    elif mode in ("cost", "brl"):
        body.pop("token_limit", None)
        errors.pop("token_limit", None)
    _check_rules(body, errors)
    return body, errors


# Values the budget rules accept, standing in for a field already found bad
# so that the rules can go on to judge the others.
_STAND_INS: dict[str, Any] = {
    "mode": "both",
    "token_limit": 1,
    "cost_limit": "1",
    "period": "monthly",
    "timezone": "UTC",
    "alert_thresholds": None,
}


_PERCENTS = N_("each must be a percent above 0 and at most 100")


def _check_rules(body: dict[str, Any], errors: dict[str, str]) -> None:
    """Add the budget rules' message for every field they refuse (the rules
    stop at the first; this asks again with that field stood in for)."""
    trial = {**body, **{f: _STAND_INS[f] for f in errors if f in _STAND_INS}}
    for _ in _STAND_INS:
        try:
            budgets.config_from_json("form", trial, timezone="UTC", currency="XXX")
        except budgets.BudgetInputError as exc:
            # The form asks for percents where the rules speak of fractions.
            message = _PERCENTS if exc.field == "alert_thresholds" else exc.message
            # A bad mode leaves no telling which limits are needed: stop there.
            if exc.field in errors or exc.field not in _STAND_INS or exc.field == "mode":
                errors.setdefault(exc.field, message)
                return
            errors[exc.field] = message
            trial[exc.field] = _STAND_INS[exc.field]
        else:
            return


def _amount(value: Decimal) -> str:
    """As typed: "500.00" when whole cents, else the API's text, "0.125"
    (the store may keep trailing zeros)."""
    cents = value.quantize(Decimal("0.01"))
    return format(cents, "f") if cents == value else money_text(value)


def form_from_state(state: BudgetState | None, timezone: str) -> dict[str, str]:
    """The form's fields for an existing budget, or a new one's defaults."""
    if state is None:
        return {
            "mode": "both",
            "token_limit": "",
            "cost_limit": "",
            "period": "monthly",
            "timezone": timezone,
            "pause_at_limit": "on",
            "alert_thresholds": "80, 90, 100",
        }
    config = state.config
    return {
        "mode": config.mode,
        "token_limit": "" if config.token_limit is None else str(config.token_limit),
        "cost_limit": "" if config.cost_limit is None else _amount(config.cost_limit),
        "period": config.period,
        "timezone": config.timezone,
        "pause_at_limit": "on" if config.pause_at_limit else "",
        "alert_thresholds": ", ".join(format((t * 100).normalize(), "f") for t in config.alert_thresholds),
    }
