"""peftlab.widgets, the base of the widget apps, on a toy model: the readout follows the model,
a bad input shows its message inside the widget (in the readout, or on its own line), the last
good figure stays, and the figure travels as plotly's mime bundle in the Output."""
import plotly.graph_objects as go
from traitlets import HasTraits, Int, Unicode, observe

from peftlab import widgets


class Doubler(HasTraits):
    """Toy app model: n in, 2n out; n < 0 is invalid."""
    n = Int(1)
    message = Unicode("")

    @observe("n")
    def _check(self, change):
        self.message = "n must be ≥ 0: pick 0 or more" if self.n < 0 else ""

    def readout(self) -> str:
        return "2n = —" if self.message else f"2n = {2 * self.n}"

    def figure(self):
        return None if self.message else go.Figure(go.Bar(y=[2 * self.n]), layout_title_text=f"n={self.n}")


def test_error_message_is_shown_in_the_widget():
    m = Doubler()
    view = widgets.ModelView(m, [], watch=["n", "message"], css="toy")
    assert "toy" in view._dom_classes and view.message is view.readout
    assert "2n = 2" in view.readout.value and view.figure.layout.title.text == "n=1"
    fig = view.figure
    m.n = -3
    assert "⚠" in view.readout.value and "n must be ≥ 0" in view.readout.value
    assert view.figure is fig                                        # the last good figure stays
    m.n = 5
    assert "2n = 10" in view.readout.value and "⚠" not in view.readout.value
    bundle = view.plot.outputs[0]
    assert bundle["output_type"] == "display_data"
    assert bundle["data"]["application/vnd.plotly.v1+json"]["data"][0]["y"] == [10]


def test_message_on_its_own_line_keeps_the_readout():
    m = Doubler()
    view = widgets.ModelView(m, [], watch=["n", "message"], css="toy", message_in_readout=False)
    assert view.children == (view.readout, view.message, view.plot) and view.message.value == ""
    m.n = -1
    assert view.readout.value == widgets.MONOSPACE.format("2n = —")
    assert view.message.value == widgets.message_html(m.message) and "⚠" in view.message.value
    assert widgets.message_html("") == "" and "&lt;b&gt;" in widgets.message_html("<b>")
