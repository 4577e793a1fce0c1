"""Charts drawn on the server as inline SVG (pure): no script, no network.

Amounts stay ``Decimal``; only their share of the tallest bar becomes a float,
as a length in the picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal

from markupsafe import Markup, escape

__all__ = ["bar_list", "column_chart"]

Label = Callable[[Decimal], str]

_W, _H = 720, 240  # the picture's own units; CSS scales it to the page
_LEFT, _BOTTOM, _TOP = 8, 28, 24


def _share(value: Decimal, tallest: Decimal) -> float:
    return float(value / tallest) if tallest > 0 and value > 0 else 0.0


def column_chart(
    points: Sequence[tuple[str, Decimal]],
    *,
    label: Label,
    title: str,
    tick: Callable[[str], str] = str,
) -> Markup:
    """One column per point (e.g. a day's spend), the tallest labelled; every
    column names its point and value in a tooltip. Every 5th point is named
    under the axis, as ``tick`` shortens its name."""
    tallest = max((v for _, v in points), default=Decimal(0))
    slot = (_W - 2 * _LEFT) / max(len(points), 1)
    plot_h = _H - _BOTTOM - _TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="axis" x="{_LEFT}" y="14">max {escape(label(tallest))}</text>',
        f'<line class="axis-line" x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _LEFT}" y2="{_H - _BOTTOM}"/>',
    ]
    for i, (name, value) in enumerate(points):
        height = plot_h * _share(value, tallest)
        x = _LEFT + i * slot
        parts.append(
            f'<rect class="column" x="{x + slot * 0.15:.1f}" y="{_H - _BOTTOM - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{height:.1f}">'
            f"<title>{escape(name)}: {escape(label(value))}</title></rect>"
        )
        if i % 5 == 0 or i == len(points) - 1:
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            at = x if anchor == "start" else x + slot if anchor == "end" else x + slot / 2
            parts.append(
                f'<text class="tick" x="{at:.1f}" y="{_H - 8}" text-anchor="{anchor}">'
                f"{escape(tick(name))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every name and label above is escaped


def bar_list(rows: Sequence[tuple[str, Decimal]], *, label: Label, title: str) -> Markup:
    """A horizontal bar per row (e.g. spend by model), longest first as given,
    each with its name and value written beside it."""
    tallest = max((v for _, v in rows), default=Decimal(0))
    row_h, name_w, value_w = 26, 200, 140
    bar_w = _W - name_w - value_w
    height = max(row_h * len(rows), row_h)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (name, value) in enumerate(rows):
        y = i * row_h
        width = bar_w * _share(value, tallest)
        parts.append(
            f'<text class="name" x="0" y="{y + 17}">{escape(name)}</text>'
            f'<rect class="bar-fill" x="{name_w}" y="{y + 5}" width="{width:.1f}" height="{row_h - 10}"/>'
            f'<text class="value" x="{_W}" y="{y + 17}" text-anchor="end">{escape(label(value))}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- every name and label above is escaped
