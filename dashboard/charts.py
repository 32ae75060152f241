"""Plotly figures for the dashboard, built as plain dicts (rendered client-side by the bundled plotly.min.js)."""

from __future__ import annotations

from typing import Any

LAYOUT = {"margin": {"l": 48, "r": 12, "t": 32, "b": 36}, "height": 260, "font": {"size": 12},
          "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)", "hovermode": "x unified",
          "legend": {"orientation": "h", "y": -0.2}}


def _fig(title: str, traces: list[dict[str, Any]], **layout: Any) -> dict[str, Any]:
    return {"data": traces, "layout": {**LAYOUT, "title": {"text": title, "x": 0, "font": {"size": 14}}, **layout}}


def cost_series(points: list[dict[str, Any]]) -> dict[str, Any]:
    return _fig("Cost (USD)", [{"type": "bar", "x": [p["t"] for p in points],
                                "y": [float(p["cost_usd"] or 0) for p in points], "name": "cost"}])


def request_series(points: list[dict[str, Any]]) -> dict[str, Any]:
    x = [p["t"] for p in points]
    return _fig("Requests and errors", [
        {"type": "scatter", "mode": "lines", "x": x, "y": [p["requests"] for p in points], "name": "requests"},
        {"type": "scatter", "mode": "lines", "x": x, "y": [p["errors"] for p in points], "name": "errors"},
    ])


def latency_series(points: list[dict[str, Any]]) -> dict[str, Any]:
    x = [p["t"] for p in points]
    return _fig("Latency (ms)", [
        {"type": "scatter", "mode": "lines", "x": x, "y": [p["latency_p50_ms"] for p in points], "name": "p50"},
        {"type": "scatter", "mode": "lines", "x": x, "y": [p["latency_p95_ms"] for p in points], "name": "p95"},
    ])


def bars(title: str, rows: list[dict[str, Any]], label: str = "value") -> dict[str, Any]:
    rows = rows[:15]
    return _fig(title, [{"type": "bar", "orientation": "h", "y": [str(r[label]) for r in reversed(rows)],
                         "x": [float(r["cost_usd"] or 0) for r in reversed(rows)], "name": "cost"}],
                hovermode="closest", margin={"l": 140, "r": 12, "t": 32, "b": 36})


def stacked_cost(points: list[dict[str, Any]]) -> dict[str, Any]:
    by_value: dict[str, tuple[list[str], list[float]]] = {}
    for p in points:
        xs, ys = by_value.setdefault(p["value"], ([], []))
        xs.append(p["t"])
        ys.append(float(p["cost_usd"] or 0))
    return _fig("Cost per value over time (USD)",
                [{"type": "bar", "x": xs, "y": ys, "name": v} for v, (xs, ys) in list(by_value.items())[:20]],
                barmode="stack")


def histogram(title: str, values: list[float], unit: str) -> dict[str, Any]:
    return _fig(title, [{"type": "histogram", "x": values, "name": unit, "nbinsx": 30}], hovermode="closest",
                xaxis={"title": {"text": unit}}, yaxis={"title": {"text": "sessions"}})


def timeline(steps: list[dict[str, Any]], label: Any) -> dict[str, Any]:
    """A waterfall: one bar per step from its start to its end (ms since the session began); click opens it."""
    names = [f"{i + 1}. {s['path']} · {label(s)}" for i, s in enumerate(steps)]
    fig = _fig("Timeline (ms from the session's start)", [{
        "type": "bar", "orientation": "h", "y": names, "base": [s["offset_ms"] for s in steps],
        "x": [max(s["latency_ms"], 1) for s in steps], "customdata": [s["request_id"] for s in steps],
        "marker": {"color": ["#d64545" if s["status"] >= 400 or s["status"] < 0 else "#3b6fd4" for s in steps]},
        "hovertemplate": "%{y}<br>start %{base} ms, %{x} ms<extra></extra>", "name": "steps"}],
        hovermode="closest", height=80 + 24 * len(steps), margin={"l": 260, "r": 12, "t": 32, "b": 36},
        showlegend=False)
    fig["layout"]["yaxis"] = {"autorange": "reversed", "automargin": True}
    return fig
