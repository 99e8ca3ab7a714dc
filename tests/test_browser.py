"""The lesson widgets work in a real JupyterLab, in a real (headless) Chromium.

nbval proves the cells run; it cannot see a widget. For each widget notebook this
test starts JupyterLab on a free loopback port with a token (PEFTLAB_PROFILE=smoke),
opens the notebook in Debian's chromium driven by Playwright, runs the cells one
by one up to the widget (01: every cell from the top; 05: the imports cell, then
the planner cell), then moves a slider (arrow key on its handle) and picks another
dropdown entry. It compares what the page shows before and after each move: the
numbers in the readout and a fingerprint of the plotly figure's data and layout
(as rendered in the DOM) must both change. Screenshots go to
artifacts/browser/ (git-ignored). The server and its kernels are always stopped.

Enable: `bash scripts/install_browser.sh` (Debian chromium) and `pip install playwright`
(in the test extras). Never `playwright install`: no browser is downloaded.
Env: PEFTLAB_CHROMIUM=/path/to/chromium picks another build;
PEFTLAB_BROWSER_NOTEBOOKS=/some/dir serves notebooks from another folder (used to
check that a deliberately broken copy makes this test fail).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from browser_util import CHROMIUM_ARGS, JupyterLab, NotebookDriver, find_chromium, numbers
except ImportError:  # tests/ imported as a package
    from tests.browser_util import CHROMIUM_ARGS, JupyterLab, NotebookDriver, find_chromium, numbers

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "browser"
NOTEBOOKS = Path(os.environ.get("PEFTLAB_BROWSER_NOTEBOOKS", ROOT / "notebooks"))
ENABLE = "run `bash scripts/install_browser.sh` and `pip install playwright` to enable it"


@dataclass(frozen=True)
class WidgetCase:
    notebook: str   # file under notebooks/
    view: str       # CSS class on the widget's root box
    slider: str     # CSS class on the slider to move
    dropdown: str   # CSS class on the dropdown to change
    readout: str    # CSS class on the element whose numbers must change
    # Cells to run: () = every cell from the top until the widget shows (the learner's path);
    # else only the code cells whose source contains one of these strings, in order (the
    # path "run the imports, jump to the widget" — for a notebook whose earlier cells measure
    # for minutes and the widget does not need them).
    cells: tuple[str, ...] = ()


CASES = [
    WidgetCase("01_low_rank_lora.ipynb", view="peftlab-rank-explorer", slider="peftlab-rank-slider",
               dropdown="peftlab-layer-dropdown", readout="peftlab-rank-readout"),
    WidgetCase("05_vram_planner.ipynb", view="peftlab-vram-planner", slider="peftlab-vram-seq-len",
               dropdown="peftlab-vram-method", readout="peftlab-vram-total",
               cells=("from peftlab import", "planner.VRAMPlanner(")),
]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason=f"Python package playwright missing; {ENABLE}")
    path = find_chromium()
    if path is None:
        pytest.skip(f"no chromium on PATH (nor $PEFTLAB_CHROMIUM); {ENABLE}")
    return path


@pytest.fixture(scope="module")
def lab(chromium_path: str):
    with JupyterLab(NOTEBOOKS, SHOTS / "jupyter-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser_context(chromium_path: str):
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="peftlab-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


def _move_slider(page, slider) -> str:
    """Focus the noUiSlider handle and press an arrow key; return the slider's new readout."""
    handle = slider.locator(".noUi-handle").first
    before = slider.locator(".widget-readout").first.inner_text()
    for key in ("ArrowRight", "ArrowLeft"):  # ArrowLeft when the slider starts at its max
        handle.focus()
        page.keyboard.press(key)
        page.wait_for_timeout(300)
        after = slider.locator(".widget-readout").first.inner_text()
        if after != before:
            return after
    raise AssertionError(f"the slider did not move from {before!r} with the arrow keys")


@pytest.mark.parametrize("case", CASES, ids=[c.notebook.split("_")[0] for c in CASES])
def test_widget_reacts_in_browser(case: WidgetCase, chromium_path: str, request) -> None:
    if not (NOTEBOOKS / case.notebook).exists():
        pytest.fail(f"{case.notebook} not found in {NOTEBOOKS}: the widget lessons are part of the kit")
    # fixtures asked for here, so a missing notebook does not start a server
    exercise_widget(case, request.getfixturevalue("lab"), request.getfixturevalue("browser_context"))


def exercise_widget(case: WidgetCase, lab: JupyterLab, browser_context) -> list[Path]:
    """Run the notebook up to `case.view`, move slider and dropdown, assert both views change."""
    name = case.notebook.removesuffix(".ipynb")
    page = browser_context.new_page()
    nb = NotebookDriver(page, SHOTS, name)
    try:
        nb.open(lab, case.notebook)
        nb.mark("open + kernel")
        sources = ["".join(c["source"]) for c in json.loads((lab.root_dir / case.notebook).read_text())["cells"]]
        only = None
        if case.cells:
            only = [i for i, src in enumerate(sources) if any(m in src for m in case.cells)]
            missing = [m for m in case.cells if not any(m in src for src in sources)]
            assert not missing, f"{case.notebook}: no cell contains {missing} (update WidgetCase.cells)"
        view = nb.run_until_visible(f".{case.view}", len(sources), only, timeout=150)
        lab.wait_kernels_idle(timeout=60)
        cell = nb.cell_of(view).locator(".jp-Cell-outputWrapper").first
        readout = view.locator(f".{case.readout}").first
        slider = view.locator(f".{case.slider}").first
        select = view.locator(f".{case.dropdown} select").first

        text0, plot0 = readout.inner_text(), nb.wait_plot(cell)
        assert numbers(text0), f"readout shows no number: {text0!r}"
        assert plot0, "no plotly figure rendered next to the widget"
        nb.shot(cell, "initial")
        nb.mark("widget idle")

        # 1) slider: the readout's numbers and the figure follow.
        value = _move_slider(page, slider)
        text1, plot1 = nb.wait_changed(readout, cell, text0, plot0)
        nb.shot(cell, "slider")
        nb.mark("slider")
        assert numbers(text1) != numbers(text0), \
            f"readout's numbers did not change after the slider moved to {value}: {text1!r}"
        assert plot1 != plot0, f"the figure did not change after the slider moved to {value}"

        # 2) dropdown: pick another entry.
        current = select.input_value()
        options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
        other = next((o for o in options if o != current), None)
        assert other is not None, f"dropdown has a single option: {options}"
        select.select_option(other)
        text2, plot2 = nb.wait_changed(readout, cell, text1, plot1)
        nb.shot(cell, "dropdown")
        nb.mark("dropdown")
        assert numbers(text2) != numbers(text1), \
            f"readout's numbers did not change after choosing {other!r}: {text2!r}"
        assert plot2 != plot1, f"the figure did not change after choosing {other!r}"
        errors = cell.inner_text()
        assert "Traceback (most recent call last)" not in errors, errors[-3000:]
        return nb.shots
    except BaseException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        try:  # a failed screenshot must not hide the real failure
            page.screenshot(path=str(SHOTS / f"{name}-FAILED.png"), full_page=True)
            print(f"screenshot of the failure: {SHOTS / f'{name}-FAILED.png'}")
        except Exception as err:
            print(f"no failure screenshot: {err}")
        raise
    finally:
        print(f"{name} timings (s): {nb.timings}")
        page.close()
        try:  # free the kernel (the next notebook gets its own)
            lab.shutdown_sessions()
        except Exception as err:
            print(f"could not shut the kernel down: {err}")
