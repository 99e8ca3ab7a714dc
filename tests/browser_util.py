"""Helpers for tests/test_browser.py: a throwaway JupyterLab server and a notebook driver.

`JupyterLab` starts `jupyter lab` on a free loopback port with a random token, an
empty settings/workspace folder (no news pop-ups, no windowed notebook) and
PEFTLAB_PROFILE=smoke, and always stops it, kernels included. `NotebookDriver`
runs a notebook's cells one by one in the real UI (Ctrl+Enter) until a widget
appears, and reads what a learner sees: readout text and the plotly figure's
data. Nothing here downloads a browser: Playwright drives Debian's chromium
through `executable_path` (scripts/install_browser.sh installs it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Flags a sandboxed, offline headless chromium needs (without the network ones it
# keeps dialling Google's hosts on this closed network).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings for the test server: every cell stays in the DOM
# (windowing off), nothing is saved, and no news / update toasts cover the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # never write the lesson notebooks back (their committed form has no outputs)
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


def find_chromium() -> str | None:
    """Path of a chromium to drive: $PEFTLAB_CHROMIUM, else chromium on PATH, else None."""
    env = os.environ.get("PEFTLAB_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """`jupyter lab` on 127.0.0.1:<free port> serving `root_dir`; use as a context manager."""

    def __init__(self, root_dir: Path, log_path: Path, *, env: dict[str, str] | None = None,
                 start_timeout: float = 90.0):
        self.root_dir = Path(root_dir)
        self.log_path = Path(log_path)
        self.port = free_port()
        self.token = os.urandom(16).hex()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="peftlab-lab-")
        self._log = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "JupyterLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        tmp = Path(self._tmp.name)
        settings = tmp / "settings"
        for rel, value in LAB_SETTINGS.items():
            f = settings / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        (tmp / "workspaces").mkdir()
        (tmp / "runtime").mkdir()
        env = {**os.environ, "PEFTLAB_PROFILE": "smoke", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
               **self.extra_env}
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser",
               f"--port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
               # opening a notebook writes a checkpoint: keep it out of notebooks/
               f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}",
               "--ServerApp.terminals_enabled=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI and containers run as root
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        # Own process group: stop() can signal the server and anything it spawned.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer /api/status in {self.start_timeout:.0f} s; "
                           f"log:\n{self.log_tail()}")

    def _descendants(self) -> list[int]:
        """Pids of everything the server started (kernels run in sessions of their own)."""
        try:
            import psutil  # comes with ipykernel
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:
            return []

    def stop(self) -> None:
        """Shut kernels and server down; escalate to SIGTERM/SIGKILL. Safe to call twice."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            children = self._descendants()
            try:  # polite: kernels first, then the server
                self.shutdown_sessions()
                self.api("POST", "/api/shutdown", timeout=5)
                proc.wait(timeout=15)
            except Exception:
                pass
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            for pid in children:  # anything that outlived the server
                _signal_group(pid, signal.SIGKILL, group=False)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._tmp.cleanup()

    # -- REST ------------------------------------------------------------------------
    def api(self, method: str, path: str, *, timeout: float = 10) -> Any:
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def url(self, notebook: str) -> str:
        """The notebook in a workspace of its own (nothing restored from an earlier tab)."""
        ws = re.sub(r"[^A-Za-z0-9-]", "-", notebook)
        return f"{self.base}/lab/workspaces/{ws}/tree/{notebook}?token={self.token}"

    def kernel_states(self) -> list[str]:
        return [s["kernel"]["execution_state"] for s in self.api("GET", "/api/sessions", timeout=30)]

    def wait_kernels_idle(self, timeout: float = 60.0) -> None:
        """Wait until every kernel reports idle twice in a row (the server tracks iopub status)."""
        deadline, streak, states = time.monotonic() + timeout, 0, []
        while time.monotonic() < deadline:
            try:
                states = self.kernel_states()
            except OSError:  # a busy machine can make the server slow to answer: ask again
                states = []
            streak = streak + 1 if states and all(s == "idle" for s in states) else 0
            if streak >= 2:
                return
            time.sleep(0.25)
        raise TimeoutError(f"kernels not idle after {timeout:.0f} s: {states}")

    def shutdown_sessions(self) -> None:
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}", timeout=10)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return "(no log)"


def _signal_group(pid: int, sig: int, *, group: bool = True) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# JS run in the page: a stable fingerprint of every plotly figure under `el`
# (trace data + user layout, private `_` keys dropped, typed arrays listed).
_PLOT_STATE_JS = """
(el) => {
  const plots = Array.from(el.querySelectorAll('.js-plotly-plot'));
  return plots.map(gd => {
    const seen = new WeakSet();
    return JSON.stringify({data: gd.data || null, layout: gd.layout || null}, (k, v) => {
      if (typeof k === 'string' && k.startsWith('_')) return undefined;
      if (ArrayBuffer.isView(v)) return Array.from(v);
      if (v && typeof v === 'object') { if (seen.has(v)) return undefined; seen.add(v); }
      return v;
    });
  });
}
"""

TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def numbers(text: str) -> list[str]:
    """The numbers a readout shows, in order ("r = 8 of 576 · 9,216" -> ['8', '576', '9,216'])."""
    return re.findall(r"\d+(?:[.,]\d+)*", text)


class NotebookDriver:
    """Drive one open notebook tab (a Playwright `Page`) the way a learner would."""

    def __init__(self, page: Any, shots_dir: Path, name: str):
        self.page = page
        self.shots_dir = Path(shots_dir)
        self.name = name
        self.shots: list[Path] = []
        self.timings: list[tuple[str, float]] = []  # (step, seconds) for the report
        self._t0 = time.monotonic()

    def mark(self, step: str) -> None:
        """Record how long `step` took since the previous mark."""
        now = time.monotonic()
        self.timings.append((step, round(now - self._t0, 1)))
        self._t0 = now

    def open(self, lab: JupyterLab, notebook: str, timeout: float = 60.0) -> None:
        """Open `notebook` and wait until its kernel is up and the page is connected to it."""
        self.page.goto(lab.url(notebook), wait_until="domcontentloaded", timeout=timeout * 1000)
        self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
        # The toolbar says "idle" before any kernel exists; the server's session only turns
        # idle after the page asked for it, so wait for the server first, then the page.
        panels = self.page.locator(".jp-NotebookPanel").count()
        assert panels == 1, f"{self.name}: expected one open notebook, found {panels}"
        lab.wait_kernels_idle(timeout=timeout)
        self.page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
            timeout=timeout * 1000)

    def run_until_visible(self, selector: str, n_cells: int, only: list[int] | None = None,
                          timeout: float = 120.0) -> Any:
        """Run code cells in order, as a learner would, until `selector` shows; return it.

        Each cell is selected (click on its prompt) and run with Ctrl+Enter; it must
        finish ([n] prompt) before the next one, and a traceback in its output fails
        at once with that output. `only`: indices of the cells to run (default: all,
        from the top). `n_cells` is the notebook's cell count: cells render
        progressively, so the DOM is waited for first.
        """
        page = self.page
        cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
        page.wait_for_function(
            f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length >= {n_cells}",
            timeout=30_000)
        target = page.locator(selector).first
        deadline = time.monotonic() + timeout
        for i in (range(n_cells) if only is None else only):
            cell = cells.nth(i)
            if "jp-CodeCell" not in (cell.get_attribute("class") or ""):
                continue  # markdown is rendered on open
            cell.locator(".jp-InputPrompt").first.click()
            page.keyboard.press("Control+Enter")
            left = max(1.0, deadline - time.monotonic())
            try:
                page.wait_for_function(
                    "(c) => /\\[\\d+\\]/.test((c.querySelector('.jp-InputPrompt') || {}).textContent || '')",
                    arg=cell.element_handle(), timeout=left * 1000)
            except Exception as err:
                raise AssertionError(f"{self.name}: cell {i} still running after {timeout:.0f} s in all "
                                     f"(steps so far: {self.timings})") from err
            self.mark(f"cell {i}")
            out = cell.inner_text()
            if TRACEBACK.search(out):
                raise AssertionError(f"{self.name}: cell {i} raised before the widget showed:\n{out[-3000:]}")
            if target.count() and target.is_visible():
                return target
        raise AssertionError(f"{self.name}: ran cells {list(only or range(n_cells))}, "
                             f"no element matches {selector!r}")

    def cell_of(self, widget: Any) -> Any:
        """The notebook cell that holds `widget` (its figure may sit beside the widget box)."""
        return widget.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")

    def plot_state(self, scope: Any) -> str:
        """Fingerprint (sha1) of all plotly figures in `scope`; '' when none has rendered."""
        states = scope.evaluate(_PLOT_STATE_JS)
        if not states:
            return ""
        return hashlib.sha1("|".join(states).encode()).hexdigest()

    def wait_plot(self, scope: Any, timeout: float = 30.0) -> str:
        scope.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible", timeout=timeout * 1000)
        return self.plot_state(scope)

    def wait_changed(self, readout: Any, scope: Any, text_before: str, plot_before: str,
                     timeout: float = 30.0) -> tuple[str, str]:
        """Wait until the readout's numbers and the figure both differ from before; return them."""
        deadline = time.monotonic() + timeout
        text, plot = text_before, plot_before
        while time.monotonic() < deadline:
            text, plot = readout.inner_text(), self.plot_state(scope)
            if numbers(text) != numbers(text_before) and plot and plot != plot_before:
                return text, plot
            time.sleep(0.25)
        return text, plot

    def shot(self, target: Any, label: str) -> Path:
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        path = self.shots_dir / f"{self.name}-{len(self.shots):02d}-{label}.png"
        target.screenshot(path=str(path))
        self.shots.append(path)
        return path
