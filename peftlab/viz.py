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


# --- notebook 01: low rank and LoRA ------------------------------------------------------------

def spectrum_cut(s, r: int, title: str = "") -> go.Figure:
    """Singular values σ_i (log scale): the top r kept by a rank-r approximation, the rest cut."""
    s = [float(v) for v in s]
    r = max(0, min(int(r), len(s)))
    idx = list(range(1, len(s) + 1))
    fig = _fig(title or f"singular values, cut at r = {r}", "index i", "σ_i (log)")
    fig.add_scatter(x=idx[:r], y=s[:r], mode="lines", fill="tozeroy", name=f"kept (i ≤ {r})",
                    line=dict(color="#1f77b4"))
    fig.add_scatter(x=idx[r:], y=s[r:], mode="lines", fill="tozeroy", name="cut (i > r)",
                    line=dict(color="#d62728"), opacity=0.5)
    fig.add_vline(x=r + 0.5, line_dash="dash", line_color="black")
    fig.update_yaxes(type="log")
    return fig


def curves(series: dict, title: str, xaxis: str, yaxis: str, log_x: bool = False,
           log_y: bool = False) -> go.Figure:
    """One line per entry of `series` {name: (x, y)} (e.g. spectra, energy or error against rank)."""
    fig = _fig(title, xaxis, yaxis)
    for name, (x, y) in series.items():
        fig.add_scatter(x=[float(v) for v in x], y=[float(v) for v in y], mode="lines", name=str(name))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def ratio_bars(labels: list[str], ratios: list[float], title: str, yaxis: str = "× baseline") -> go.Figure:
    """Bars of ratios against a baseline (the first bar is 1.0 by construction), with a line at 1."""
    fig = _fig(title, "", yaxis)
    fig.add_bar(x=list(labels), y=[float(v) for v in ratios], text=[f"{v:.2f}×" for v in ratios],
                textposition="outside")
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray")
    return fig


def subspace_heatmap(phi, title: str, xaxis: str = "j (top-j directions, r = 64)",
                     yaxis: str = "i (top-i directions, r = 8)") -> go.Figure:
    """φ(i, j) of LoRA §7.2 as a heatmap, i and j counted from 1."""
    z = [[float(v) for v in row] for row in phi]
    fig = _fig(title, xaxis, yaxis)
    fig.add_heatmap(z=z, x=list(range(1, len(z[0]) + 1)), y=list(range(1, len(z) + 1)),
                    zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="φ"))
    return fig


def footprint_bars(named_bytes: dict[str, int], title: str = "Memory") -> go.Figure:
    """One bar per setting, height in MB, labelled with MB and the share of the first bar."""
    names = list(named_bytes)
    mb = [named_bytes[n] / 1e6 for n in names]
    base = mb[0] if mb and mb[0] else 1.0
    fig = _fig(title, "", "MB")
    fig.add_bar(x=names, y=mb, text=[f"{v:.1f} MB ({v / base:.0%})" for v in mb], textposition="outside")
    fig.update_yaxes(range=[0, max(mb + [0]) * 1.2])
    return fig


# --- notebook 03: DoRA ---------------------------------------------------------------------------

def magnitude_by_layer(mags: dict, title: str = "DoRA magnitude m = ‖W‖_c per output row") -> go.Figure:
    """One box per layer of the row norms {layer: values (out,)}: the magnitudes DoRA starts from."""
    fig = _fig(title, "layer", "‖W_row‖₂")
    for layer, values in mags.items():
        fig.add_box(y=[float(v) for v in values], name=str(layer), boxpoints=False,
                    marker_color="#1f77b4", showlegend=False)
    return fig


def delta_md_scatter(rows_by_method: dict, ours: dict, paper: dict,
                     title: str = "ΔM against ΔD (DoRA paper, Fig. 2)") -> go.Figure:
    """One panel per method: a point per (checkpoint, layer) with ΔD on x and ΔM on y, coloured by step.

    rows_by_method: {method: [{"step", "layer", "dM", "dD"}, ...]}; ours / paper: {method: correlation}.
    """
    from plotly.subplots import make_subplots

    methods = list(rows_by_method)
    names = [f"{m}: r = {ours.get(m, float('nan')):+.2f} (paper {paper[m]:+.2f})" if m in paper
             else f"{m}: r = {ours.get(m, float('nan')):+.2f}" for m in methods]
    fig = make_subplots(rows=1, cols=len(methods), subplot_titles=names, horizontal_spacing=0.08)
    steps = sorted({r["step"] for rows in rows_by_method.values() for r in rows}) or [0]
    for i, m in enumerate(methods, start=1):
        rows = rows_by_method[m]
        fig.add_scatter(x=[r["dD"] for r in rows], y=[r["dM"] for r in rows], mode="markers",
                        text=[f"step {r['step']}, layer {r['layer']}" for r in rows], name=m,
                        marker=dict(color=[r["step"] for r in rows], colorscale="Viridis", cmin=steps[0],
                                    cmax=steps[-1], size=6, showscale=i == len(methods),
                                    colorbar=dict(title="step")),
                        showlegend=False, row=1, col=i)
        fig.update_xaxes(title_text="ΔD (mean 1 − cos)", exponentformat="e", row=1, col=i)
    fig.update_yaxes(title_text="ΔM (mean |Δ‖row‖|)", exponentformat="e", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=title, margin=dict(l=60, r=20, t=80, b=50))
    return fig


# --- VRAM planner (notebook 05) -----------------------------------------------------------

def vram_stacked(breakdowns: dict, title: str = "Predicted peak memory", unit: float = 1e9) -> go.Figure:
    """Stacked bars: one bar per label, one segment per breakdown term ({label: {term: bytes}})."""
    fig = _fig(title, "", "GB" if unit == 1e9 else "GiB", barmode="stack")
    labels = list(breakdowns)
    terms = list(dict.fromkeys(k for b in breakdowns.values() for k in b))
    for term in terms:
        fig.add_bar(name=term, x=labels, y=[breakdowns[lab].get(term, 0) / unit for lab in labels])
    return fig


def predicted_vs_measured(labels: list[str], predicted: list[float], measured: list[float],
                          title: str = "Estimator vs measured peak", unit: str = "GB") -> go.Figure:
    """Scatter of predicted against measured with the y = x line; hover shows the row label."""
    fig = _fig(title, f"measured ({unit})", f"predicted ({unit})")
    hi = max(list(predicted) + list(measured)) * 1.05
    fig.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="y = x", line=dict(dash="dash", color="grey"))
    fig.add_scatter(x=list(measured), y=list(predicted), mode="markers", name="rows", text=list(labels),
                    hovertemplate="%{text}<br>measured %{x:.2f}<br>predicted %{y:.2f}<extra></extra>")
    return fig
