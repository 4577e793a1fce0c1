"""The dashboard's limits form: rows of fields to a limits body and back (pure).

Each row is one limit (``limit-<i>-name``, ``-metric``, ``-limit``,
``-window``, ``-per``, ``-models``); a row without a name is left out. The
limit rules live in :func:`taximeter.pricing.limits.limits_from_json`, whose
errors name ``limits[i].<field>``: the form shows each beside its field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taximeter.pricing.limits import MAX_LIMITS, limits_json
from taximeter.pricing.models import Limit

__all__ = ["BLANK_ROWS", "form_from_limits", "parse_limits_form", "rows_from_form"]

BLANK_ROWS = 2  # empty rows offered for new limits
_FIELDS = ("name", "metric", "limit", "window", "per", "models")


def parse_limits_form(form: Mapping[str, str]) -> dict[str, Any]:
    """The ``{"limits": [...]}`` body the rows declare, in their order."""
    declared = []
    for i in range(MAX_LIMITS + BLANK_ROWS):
        row = {field: form.get(f"limit-{i}-{field}", "").strip() for field in _FIELDS}
        if not row["name"]:
            continue
        item: dict[str, Any] = {
            "name": row["name"],
            "metric": row["metric"],
            "window": row["window"] or "none",
        }
        amount = row["limit"].replace(" ", "").replace("_", "")
        item["limit"] = int(amount) if row["metric"] != "cost" and amount.isdigit() else amount
        if row["metric"] == "concurrent":
            item["window"] = "none"
        if row["per"]:
            item["per"] = row["per"]
        globs = [g.strip() for g in row["models"].split(",") if g.strip()]
        if globs:
            item["models"] = globs
        declared.append(item)
    return {"limits": declared}


def form_from_limits(limits: tuple[Limit, ...]) -> list[dict[str, str]]:
    """One row of text per limit, then the blank rows."""
    rows = [
        {
            "name": item["name"],
            "metric": item["metric"],
            "limit": str(item["limit"]),
            "window": item["window"],
            "per": item["per"],
            "models": ", ".join(item["models"] or []),
        }
        for item in limits_json(limits)
    ]
    return rows + [dict.fromkeys(_FIELDS, "") for _ in range(BLANK_ROWS)]


def rows_from_form(form: Mapping[str, str]) -> list[dict[str, str]]:
    """The rows as sent (to show them again beside their errors), and the blank rows."""
    rows = []
    for i in range(MAX_LIMITS + BLANK_ROWS):
        if f"limit-{i}-name" not in form:
            break
        rows.append({field: form.get(f"limit-{i}-{field}", "") for field in _FIELDS})
    return rows
