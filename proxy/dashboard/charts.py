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
    points: Sequence[tuple[str, Sequence[tuple[str, Decimal]]]],
    *,
    label: Label,
    title: str,
    tick: Callable[[str], str] = str,
    most: str = "max",
) -> Markup:
    """One column per point (e.g. a day), stacked by series (e.g. api_type,
    each drawn in its ``series-<name>`` class, first at the bottom); the
    tallest total labelled (after ``most``), every part named with its value
    in a tooltip. Every 5th point is named under the axis, as ``tick``
    shortens its name."""
    totals = [sum((v for _, v in parts), Decimal(0)) for _, parts in points]
    tallest = max(totals, default=Decimal(0))
    slot = (_W - 2 * _LEFT) / max(len(points), 1)
    plot_h = _H - _BOTTOM - _TOP
    parts_svg = [
        f'<svg class="chart stacked" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="axis" x="{_LEFT}" y="14">{escape(most)} {escape(label(tallest))}</text>',
        f'<line class="axis-line" x1="{_LEFT}" y1="{_H - _BOTTOM}" x2="{_W - _LEFT}" y2="{_H - _BOTTOM}"/>',
    ]
    for i, ((name, parts), total) in enumerate(zip(points, totals, strict=True)):
        x = _LEFT + i * slot
        base = float(_H - _BOTTOM)
        parts_svg.append(f'<g class="stack"><title>{escape(name)}: {escape(label(total))}</title>')
        for series, value in parts:
            height = plot_h * _share(value, tallest)
            if height <= 0:
                continue
            base -= height
            parts_svg.append(
                f'<rect class="column series-{escape(series)}" x="{x + slot * 0.15:.1f}" y="{base:.1f}" '
                f'width="{slot * 0.7:.1f}" height="{height:.1f}">'
                f"<title>{escape(name)} · {escape(series)}: {escape(label(value))}</title></rect>"
            )
        parts_svg.append("</g>")
        if i % 5 == 0 or i == len(points) - 1:
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            at = x if anchor == "start" else x + slot if anchor == "end" else x + slot / 2
            parts_svg.append(
                f'<text class="tick" x="{at:.1f}" y="{_H - 8}" text-anchor="{anchor}">'
                f"{escape(tick(name))}</text>"
            )
    parts_svg.append("</svg>")
    return Markup("".join(parts_svg))  # noqa: S704 -- every name and label above is escaped


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
