"""Forecasts, read without servers: the burn rate so far carried to the
period's end, and when it passes the limit (pricing/forecast.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from taximeter.pricing.forecast import project

START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)


def test_the_rate_so_far_is_carried_to_the_end() -> None:
    now = START + timedelta(days=10)
    course = project(Decimal(100), Decimal(1_000), START, END, now)
    assert course is not None
    assert course.at_end == Decimal(310)  # 10 a day, 31 days
    assert course.runs_out_at is None  # 310 never reaches 1,000


def test_when_it_passes_the_limit_it_says_when() -> None:
    now = START + timedelta(days=10)
    course = project(Decimal(500), Decimal(1_000), START, END, now)
    assert course is not None and course.at_end == Decimal(1_550)
    assert course.runs_out_at == START + timedelta(days=20)  # 50 a day: 500 more in 10 days
    spent = project(Decimal(1_200), Decimal(1_000), START, END, now)
    assert spent is not None and spent.runs_out_at == now  # already past it


def test_nothing_is_said_too_soon_or_after_the_end() -> None:
    assert (
        project(Decimal(5), Decimal(10), START, END, START + timedelta(hours=30)) is None
    )  # < 1/20 of March
    assert project(Decimal(5), Decimal(10), START, END, START + timedelta(hours=38)) is not None
    daily_end = START + timedelta(days=1)  # a day's window: a twentieth of it (72 minutes) is enough
    assert project(Decimal(5), Decimal(10), START, daily_end, START + timedelta(minutes=30)) is None
    assert project(Decimal(5), Decimal(10), START, daily_end, START + timedelta(minutes=73)) is not None
    assert project(Decimal(5), Decimal(10), START, END, END) is None
    idle = project(Decimal(0), Decimal(10), START, END, START + timedelta(days=3))
    assert idle is not None and (idle.at_end, idle.runs_out_at) == (Decimal(0), None)
