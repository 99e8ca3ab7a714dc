"""Plotly figure builders: pure functions that take data and return a `go.Figure`.

They never call `.show()` and never import widget code, so tests can
check a figure's data without a browser. Sections follow the notebooks (00 → 06);
a lesson adds its builders to its own section. Numbers may come as lists, NumPy arrays or torch
tensors on any device (a CUDA tensor is copied to the host once, not read element by element).
"""
from __future__ import annotations

import plotly.graph_objects as go

TEMPLATE = "plotly_white"


def _host(values):
    """A torch tensor (any device, any dtype) as nested Python floats; anything else as it is."""
    return values.detach().float().cpu().tolist() if hasattr(values, "detach") else values


def _floats(values) -> list[float]:
    """A 1-D sequence of numbers (list, array, tensor on any device) as a list of Python floats."""
    return [float(v) for v in _host(values)]


def _fig(title: str, xaxis: str, yaxis: str, **layout) -> go.Figure:
    """An empty figure in the house style (white template, titled axes)."""
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=xaxis, yaxis_title=yaxis,
                      margin=dict(l=60, r=20, t=50, b=50), **layout)
    return fig


# --- notebook 00: start here ----------------------------------------------------------------------

def footprint_bars(named_bytes: dict[str, int], title: str = "Memory") -> go.Figure:
    """One bar per setting, height in MB, labelled with MB and the share of the first bar."""
    names = list(named_bytes)
    mb = [named_bytes[n] / 1e6 for n in names]
    base = mb[0] if mb and mb[0] else 1.0
    fig = _fig(title, "", "MB")
    fig.add_bar(x=names, y=mb, text=[f"{v:.1f} MB ({v / base:.0%})" for v in mb], textposition="outside")
    fig.update_yaxes(range=[0, max(mb + [0]) * 1.2])
    return fig


# --- notebook 01: low rank and LoRA (and the rank explorer) ---------------------------------------

def spectrum_cut(s, r: int, title: str = "") -> go.Figure:
    """Singular values σ_i (log scale): the top r kept by a rank-r approximation, the rest cut."""
    s = _floats(s)
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
        fig.add_scatter(x=_floats(x), y=_floats(y), mode="lines", name=str(name))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def ratio_bars(labels: list[str], ratios: list[float], title: str, yaxis: str = "× baseline") -> go.Figure:
    """Bars of ratios against a baseline (the first bar is 1.0 by construction), with a line at 1."""
    fig = _fig(title, "", yaxis)
    ratios = _floats(ratios)
    fig.add_bar(x=list(labels), y=ratios, text=[f"{v:.2f}×" for v in ratios],
                textposition="outside")
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray")
    return fig


def subspace_heatmap(phi, title: str, xaxis: str = "j (top-j directions, r = 64)",
                     yaxis: str = "i (top-i directions, r = 8)") -> go.Figure:
    """φ(i, j) of LoRA §7.2 as a heatmap, i and j counted from 1."""
    z = [_floats(row) for row in _host(phi)]
    fig = _fig(title, xaxis, yaxis)
    fig.add_heatmap(z=z, x=list(range(1, len(z[0]) + 1)), y=list(range(1, len(z) + 1)),
                    zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="φ"))
    return fig


# --- notebook 02: NF4 quantization (and the block explorer) ---------------------------------------

def distribution_vs_normal(centers, density, title: str, log_y: bool = True) -> go.Figure:
    """A histogram (bin centres, density) of standardized values against the N(0, 1) density."""
    import math

    x = _floats(centers)
    fig = _fig(title, "(w − mean) / std", "density" + (" (log)" if log_y else ""))
    fig.add_bar(x=x, y=_floats(density), name="weights", marker_color="#1f77b4",
                opacity=0.7, width=(x[1] - x[0]) if len(x) > 1 else None)
    fig.add_scatter(x=x, y=[math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in x], mode="lines",
                    name="N(0, 1)", line=dict(color="#d62728"))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def code_levels(codes: dict, title: str = "The 16 levels of each 4-bit data type") -> go.Figure:
    """One row of markers per data type {name: levels in [−1, 1]}."""
    fig = _fig(title, "level (× block absmax)", "")
    for name, levels in codes.items():
        vals = sorted({round(v, 6) for v in _floats(levels)})
        fig.add_scatter(x=vals, y=[str(name)] * len(vals), mode="markers+text", name=str(name),
                        text=[f"{v:.2f}" for v in vals], textposition="top center", textfont=dict(size=8),
                        marker=dict(size=9, symbol="line-ns-open", line=dict(width=2)), showlegend=False)
    return fig


def levels_histogram(centers, counts, levels, title: str) -> go.Figure:
    """Histogram of w / block absmax with a dashed line at each code level (the block explorer)."""
    x = _floats(centers)
    fig = _fig(title, "w / absmax of its block", "weights")
    fig.add_bar(x=x, y=_floats(counts), name="weights", marker_color="#1f77b4",
                width=(x[1] - x[0]) if len(x) > 1 else None)
    for v in sorted({round(v, 6) for v in _floats(levels)}):
        fig.add_vline(x=v, line_dash="dash", line_color="#d62728", line_width=1)
    fig.update_xaxes(range=[-1.05, 1.05])
    return fig


def grouped_bars(categories: list[str], series: dict, title: str, yaxis: str,
                 fmt: str = "{:.3f}") -> go.Figure:
    """Grouped bars: one group per category, one bar per series {name: values}."""
    fig = _fig(title, "", yaxis, barmode="group")
    for name, values in series.items():
        vals = _floats(values)
        fig.add_bar(name=str(name), x=list(categories), y=vals, text=[fmt.format(v) for v in vals],
                    textposition="outside")
    return fig


# --- notebook 03: DoRA ----------------------------------------------------------------------------

def magnitude_by_layer(mags: dict, title: str = "DoRA magnitude m = ‖W‖_c per output row") -> go.Figure:
    """One box per layer of the row norms {layer: values (out,)}: the magnitudes DoRA starts from."""
    fig = _fig(title, "layer", "‖W_row‖₂")
    for layer, values in mags.items():
        fig.add_box(y=_floats(values), name=str(layer), boxpoints=False,
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


# --- notebook 04: a full QLoRA fine-tune ----------------------------------------------------------

def loss_curve(series: dict, title: str = "training loss", log_y: bool = True) -> go.Figure:
    """Training loss against optimizer step, one line per run {name: (steps, losses)}.

    Works with empty lists (the live plot's first frame); log y because loss falls by orders of magnitude.
    """
    fig = _fig(title, "optimizer step", "loss (answer tokens)")
    for name, (steps, losses) in series.items():
        fig.add_scatter(x=[int(s) for s in _host(steps)], y=_floats(losses), mode="lines+markers",
                        marker_size=4, name=str(name))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def before_after_fields(before: dict, after: dict, title: str = "per-field accuracy on the test split",
                        labels: tuple[str, str] = ("before", "after")) -> go.Figure:
    """Grouped bars of per-field scores {field: share correct} before and after training (0–1)."""
    keys = list(after) or list(before)
    fig = grouped_bars(keys, {labels[0]: [before.get(k, 0.0) for k in keys],
                              labels[1]: [after.get(k, 0.0) for k in keys]}, title, "share correct", "{:.2f}")
    fig.update_yaxes(range=[0, 1.15])
    return fig


# --- notebook 05: the VRAM planner ----------------------------------------------------------------

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
    predicted, measured = _floats(predicted), _floats(measured)
    hi = max(predicted + measured) * 1.05
    fig.add_scatter(x=[0, hi], y=[0, hi], mode="lines", name="y = x", line=dict(dash="dash", color="grey"))
    fig.add_scatter(x=measured, y=predicted, mode="markers", name="rows", text=list(labels),
                    hovertemplate="%{text}<br>measured %{x:.2f}<br>predicted %{y:.2f}<extra></extra>")
    return fig


# --- notebook 06: the showdown --------------------------------------------------------------------

METHOD_COLORS = {"full": "#7f7f7f", "lora": "#1f77b4", "qlora": "#2ca02c", "dora": "#d62728",
                 "qdora": "#9467bd"}


def score_vs_cost(rows, cost: str, xaxis: str, title: str, scale: float = 1.0,
                  log_x: bool = False) -> go.Figure:
    """Held-out exact match (mean ± std over seeds) against a cost (memory, s/step): one marker per method.

    rows: dicts with method, exact_match, exact_match_std and the `cost` key; x = row[cost] * scale.
    """
    fig = _fig(title, xaxis, "held-out exact match")
    for row in rows:
        m = row["method"]
        fig.add_scatter(x=[row[cost] * scale], y=[row["exact_match"]], mode="markers+text",
                        text=[m], textposition="top center", name=m,
                        marker=dict(size=14, color=METHOD_COLORS.get(m, "#17becf")),
                        error_y=dict(type="data", array=[row.get("exact_match_std", 0.0)], visible=True))
    fig.update_yaxes(range=[-0.05, 1.05])
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def memory_stack(rows, title: str = "where the training memory goes (counted)") -> go.Figure:
    """Stacked bars per method: weights, gradients, optimizer states, saved activations (MiB)."""
    parts = ("weights", "gradients", "optimizer", "activations")
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    fig = _fig(title, "method", "MiB", barmode="stack")
    names = [row["method"] for row in rows]
    for part, color in zip(parts, colors):
        fig.add_bar(x=names, y=[row[f"mem_{part}"] / 2**20 for row in rows], name=part, marker_color=color)
    return fig


def rank_sweep(series: dict, title: str = "rank sweep: held-out exact match against r") -> go.Figure:
    """One line per method {name: (ranks, scores)} on a log2 rank axis."""
    fig = _fig(title, "rank r (log₂)", "held-out exact match")
    for name, (ranks, scores) in series.items():
        fig.add_scatter(x=list(ranks), y=list(scores), mode="lines+markers", name=name,
                        line=dict(color=METHOD_COLORS.get(name, None)))
    fig.update_xaxes(type="log", tickvals=sorted({r for rs, _ in series.values() for r in rs}))
    fig.update_yaxes(range=[-0.05, 1.05])
    return fig
