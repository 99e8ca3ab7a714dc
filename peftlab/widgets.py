"""The one base of the kit's widget apps (rank explorer, block explorer, VRAM planner).

    model (traitlets.HasTraits: readout() -> str, message -> str, figure() -> go.Figure | None)
      ──observe──▶ ModelView (ipywidgets.VBox): controls · readout · message · plotly figure

Each app keeps its logic in a model with no widget imports, so pytest drives it without a
kernel, and its view subclasses `ModelView`, which owns the three things every app shows:
the readout (HTML), the error message (in the widget, never a traceback) and the figure
(plotly's mime bundle in an `Output`, which renders without a kernel round trip). This is
the only module that imports ipywidgets; apps use `ipw` from here.
"""
from __future__ import annotations

import html
import json
from collections.abc import Sequence

import ipywidgets as ipw

MONOSPACE = "<span style='font-family:monospace'>{}</span>"   # readout format: {} = escaped text
BOLD = "<b>{}</b>"


def plotly_output(fig) -> dict:
    """A display_data output for an ipywidgets Output: plotly's mime bundle, no kernel needed."""
    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False))
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": spec,
                     "text/plain": f"<Figure: {fig.layout.title.text}>"}}


def message_html(message: str) -> str:
    """The error line shown inside a widget: '⚠ message' in red, or '' when there is none. Only
    <, > and & are escaped (quotes stay quotes), so the text reads the same in the page and in tests."""
    return f"<span style='color:#b00'>⚠ {html.escape(message, quote=False)}</span>" if message else ""


STALE = "not current, fix the input above; last valid: "   # title prefix of a greyed-out figure


def stale_figure(fig):
    """A greyed copy of `fig` whose title says plainly that it belongs to the last valid input."""
    import plotly.graph_objects as go

    grey = go.Figure(fig)
    grey.update_traces(opacity=0.25)
    grey.update_layout(title_text=STALE + (fig.layout.title.text or ""), title_font_color="#888")
    return grey


class ModelView(ipw.VBox):
    """Controls on top, then the readout, the message and the figure, re-rendered from `model`.

    `watch`: the model traits whose change re-renders. `message_in_readout`: show the error in
    place of the readout (explorers) or on its own line under it (planner, whose readout keeps
    a placeholder). While the input is invalid no number is presented as current: the readout
    shows the message (or a placeholder), and the last good figure stays only greyed out, titled
    "not current, fix the input above; last valid: …" (`stale`, CSS class `peftlab-stale`).
    Subclasses build their controls (and any `extra` widgets), then call `super().__init__`,
    which renders once; they may extend `render`.
    """

    READOUT = MONOSPACE

    def __init__(self, model, controls: Sequence[ipw.Widget], *, watch: Sequence[str], css: str,
                 extra: Sequence[ipw.Widget] = (), message_in_readout: bool = True):
        self.model = model
        self.readout = ipw.HTML()
        self.message = self.readout if message_in_readout else ipw.HTML()
        self.plot = ipw.Output()
        self.figure = None     # the last good figure (shown greyed while the input is invalid)
        self.stale = False     # whether the figure on show belongs to an earlier, valid input
        parts = [self.readout] if message_in_readout else [self.readout, self.message]
        super().__init__([*controls, *parts, *extra, self.plot])
        self.add_class(css)
        model.observe(self.render, names=list(watch))
        self.render()

    def render(self, change=None) -> None:
        m = self.model
        text = self.READOUT.format(html.escape(m.readout()))
        if self.message is self.readout:
            self.readout.value = message_html(m.message) if m.message else text
        else:
            self.readout.value, self.message.value = text, message_html(m.message)
        fig = None if m.message else m.figure()
        if fig is not None:
            self.figure, self.stale = fig, False
            self.plot.outputs = (plotly_output(fig),)
            self.plot.remove_class("peftlab-stale")
        elif self.figure is not None and not self.stale:   # grey the last good one, say whose it is
            self.stale = True
            self.plot.outputs = (plotly_output(stale_figure(self.figure)),)
            self.plot.add_class("peftlab-stale")
