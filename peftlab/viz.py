"""Plotly figure builders: pure functions that take data and return a `go.Figure`.

They never call `.show()` and never import `ui` or widget code, so tests can
check a figure's data without a browser. Lessons add their builders here.
"""
from __future__ import annotations

import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def _fig(title: str, xaxis: str, yaxis: str, **layout) -> go.Figure:
    """An empty figure in the house style (white template, titled axes)."""
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=xaxis, yaxis_title=yaxis,
                      margin=dict(l=60, r=20, t=50, b=50), **layout)
    return fig
