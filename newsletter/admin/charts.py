"""The dashboard's chart as plain geometry: scales, ticks and polyline points for an inline SVG template."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from ..stats import DayActivity

WIDTH, HEIGHT = 760, 300
# Room for the y-axis numbers on the left, the legend above, the date labels and axis title below.
LEFT, RIGHT, TOP, BOTTOM = 56, 32, 44, 56


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    points: str  # "x,y x,y …" for <polyline points>
    total: int
    dash: str  # stroke-dasharray: told apart by shape, not only by colour
    colour: str


@dataclass(frozen=True)
class DailyChart:
    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    series: list[Series]
    first: date
    last: date
    peak: int


def nice_step(peak: int, most_ticks: int = 5) -> int:
    """A step of 1, 2 or 5 × 10ⁿ that covers 0…peak in at most `most_ticks` steps."""
    raw = max(peak, 1) / most_ticks
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for multiple in (1, 2, 5, 10):
        step = multiple * magnitude
        if step >= raw:
            return max(1, int(step))
    return int(10 * magnitude)  # pragma: no cover (10 × magnitude ≥ raw always)


def day_label(day: date) -> str:
    return f"{day.day} {day:%b}"


# Each line: (DayActivity field, legend, dash pattern, colour). Told apart by shape, not only by colour.
LINES = (("confirmed", "Confirmed signups", "", "#0b5394"), ("unsubscribed", "Unsubscribes", "6 4", "#a4001d"),
         ("bounces", "Bounces", "2 3", "#8a5a00"), ("complaints", "Complaints", "10 3 2 3", "#5b2a86"))


def daily_chart(days: Sequence[DayActivity], *, with_delivery: bool = True) -> DailyChart:
    """Lines over the days given (confirmed signups, unsubscribes; bounces, complaints), with labelled axes."""
    lines = LINES if with_delivery else LINES[:2]
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    peak = max([max(getattr(d, key) for key, *_ in lines) for d in days] + [0])
    step = nice_step(peak)
    top_value = step * max(1, math.ceil(peak / step))
    span = max(len(days) - 1, 1)

    def x(index: int) -> float:
        return round(LEFT + (right - LEFT) * index / span, 1)

    def y(value: int) -> float:
        return round(bottom - (bottom - TOP) * value / top_value, 1)

    y_ticks = [Tick(y(value), str(value)) for value in range(0, top_value + 1, step)]
    # A date label about every two weeks, always the last day, never two crowding each other.
    every = max(1, round(len(days) / 6))
    indexes = list(range(0, len(days), every))
    if days and indexes[-1] != len(days) - 1:
        if len(days) - 1 - indexes[-1] < every / 2:
            indexes.pop()
        indexes.append(len(days) - 1)
    x_ticks = [Tick(x(i), day_label(days[i].day)) for i in indexes]
    series = [
        Series(key, label, " ".join(f"{x(i)},{y(getattr(d, key))}" for i, d in enumerate(days)),
               sum(getattr(d, key) for d in days), dash, colour)
        for key, label, dash, colour in lines
    ]
    return DailyChart(WIDTH, HEIGHT, LEFT, right, TOP, bottom, y_ticks, x_ticks, series,
                      days[0].day if days else date.today(), days[-1].day if days else date.today(), peak)
