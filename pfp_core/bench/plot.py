"""Small line and bar charts drawn with OpenCV onto numpy canvases (matplotlib is not a dependency).

Every function draws into a uint8 RGB array [H, W, 3] in place; `rect` is (left, top, width, height) of the
plotting panel including its title, tick labels and axis labels. Save the result with pfp_core.video_io.save_image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY, LIGHT = (20, 20, 20), (110, 110, 110), (225, 225, 225)
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
Rect = tuple[int, int, int, int]


def canvas(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, np.uint8)


def text(img: np.ndarray, label: str, org: tuple[int, int], scale: float = 0.5, color=BLACK, thickness: int = 1,
         align: str = "left") -> None:
    """org is the baseline point; align 'left', 'center' or 'right' moves the text around it."""
    (w, _), _ = cv2.getTextSize(label, FONT, scale, thickness)
    x = org[0] - (w if align == "right" else w // 2 if align == "center" else 0)
    cv2.putText(img, label, (int(x), int(org[1])), FONT, scale, color, thickness, cv2.LINE_AA)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.0e}"
    return f"{value:g}"


def _frame(img: np.ndarray, rect: Rect, title: str, xlabel: str, ylabel: str) -> Rect:
    """Title and axis labels around the panel; returns the inner plot area."""
    left, top, width, height = rect
    text(img, title, (left + width // 2, top + 22), 0.62, BLACK, 2, "center")
    if xlabel:
        text(img, xlabel, (left + width // 2, top + height - 8), 0.5, GREY, 1, "center")
    if ylabel:
        text(img, ylabel, (left + 4, top + 46), 0.5, GREY, 1)
    return left + 62, top + 58, width - 80, height - 58 - 48


def log_ticks(lo: float, hi: float) -> list[float]:
    """log10 of 1-2-5 tick values covering [lo, hi] (both > 0), for a logarithmic axis."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    values = [m * 10.0**d for d in range(first, last + 1) for m in (1, 2, 5)]
    below = max(v for v in values if v <= lo)
    above = min(v for v in values if v >= hi)
    return [math.log10(v) for v in values if below <= v <= above]


def _y_axis(img: np.ndarray, area: Rect, ticks: list[float], log: bool = False) -> None:
    x, y, w, h = area
    for value in ticks:
        py = _to_y(value, ticks, area)
        cv2.line(img, (x, py), (x + w, py), LIGHT, 1)
        text(img, tick_label(round(10**value, 6) if log else value), (x - 6, py + 5), 0.45, GREY, 1, "right")
    cv2.line(img, (x, y), (x, y + h), BLACK, 1)
    cv2.line(img, (x, y + h), (x + w, y + h), BLACK, 1)


def _to_y(value: float, ticks: list[float], area: Rect) -> int:
    _, y, _, h = area
    lo, hi = ticks[0], ticks[-1]
    return int(round(y + h - (value - lo) / (hi - lo) * h))


def legend(img: np.ndarray, org: tuple[int, int], items: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    """A boxed legend with its top-left corner at org, one colour swatch per label."""
    widths = [cv2.getTextSize(label, FONT, 0.45, 1)[0][0] for label, _ in items]
    box_w, box_h = max(widths) + 40, 20 * len(items) + 8
    x, y = org
    cv2.rectangle(img, (x, y), (x + box_w, y + box_h), (255, 255, 255), -1)
    cv2.rectangle(img, (x, y), (x + box_w, y + box_h), GREY, 1)
    for i, (label, color) in enumerate(items):
        cy = y + 14 + 20 * i
        cv2.rectangle(img, (x + 8, cy - 6), (x + 24, cy + 4), color, -1)
        text(img, label, (x + 30, cy + 4), 0.45, BLACK)


def line_chart(img: np.ndarray, rect: Rect, series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
               title: str, xlabel: str = "", ylabel: str = "") -> None:
    """Lines with dot markers; series are (label, xs, ys). The y axis starts at 0."""
    area = _frame(img, rect, title, xlabel, ylabel)
    x, y, w, h = area
    xs_all = [v for _, xs, _ in series for v in xs]
    ys_all = [v for _, _, ys in series for v in ys]
    x_lo, x_hi = min(xs_all), max(xs_all)
    y_ticks = nice_ticks(0.0, max(ys_all) * 1.05)
    _y_axis(img, area, y_ticks)
    to_x = lambda v: int(round(x + (v - x_lo) / ((x_hi - x_lo) or 1) * w))
    for value in nice_ticks(x_lo, x_hi, 6):
        if x_lo <= value <= x_hi:
            cv2.line(img, (to_x(value), y + h), (to_x(value), y + h + 4), BLACK, 1)
            text(img, tick_label(value), (to_x(value), y + h + 20), 0.45, GREY, 1, "center")
    for i, (_, xs, ys) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        points = [(to_x(a), _to_y(b, y_ticks, area)) for a, b in zip(xs, ys)]
        for p, q in zip(points, points[1:]):
            cv2.line(img, p, q, color, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
    legend(img, (x + 10, y + 6), [(label, COLORS[i % len(COLORS)]) for i, (label, _, _) in enumerate(series)])


def bar_chart(img: np.ndarray, rect: Rect, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float]]],
              title: str, ylabel: str = "", value_format: str = "{:.2g}", log: bool = False) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series, each labelled with its value.
    log: a logarithmic y axis (values > 0), for bars that differ by orders of magnitude."""
    area = _frame(img, rect, title, "", ylabel)
    x, y, w, h = area
    top = max(v for _, values in series for v in values)
    if log:
        y_ticks = log_ticks(min(v for _, values in series for v in values) * 0.9, top * 1.3)
        series = [(label, [math.log10(v) for v in values]) for label, values in series]
    else:
        y_ticks = nice_ticks(0.0, top * 1.12)
    _y_axis(img, area, y_ticks, log)
    group_w = w / len(groups)
    bar_w = group_w * 0.8 / len(series)
    for g, group in enumerate(groups):
        gx = x + g * group_w + group_w * 0.1
        for s, (_, values) in enumerate(series):
            left = int(round(gx + s * bar_w))
            right = int(round(gx + (s + 1) * bar_w)) - 3
            py = _to_y(values[g], y_ticks, area)
            cv2.rectangle(img, (left, py), (right, y + h), COLORS[s % len(COLORS)], -1)
            label = value_format.format(10 ** values[g] if log else values[g])
            text(img, label, ((left + right) // 2, py - 5), 0.42, BLACK, 1, "center")
        text(img, group, (int(gx + group_w * 0.4), y + h + 20), 0.45, BLACK, 1, "center")
    legend(img, (x + 10, y + 6), [(label, COLORS[i % len(COLORS)]) for i, (label, _) in enumerate(series)])
