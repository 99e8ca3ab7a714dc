#!/usr/bin/env bash
# Install what the browser test (tests/test_browser.py) needs: Debian's chromium.
#
# Idempotent: does nothing when a chromium is already on PATH. Never downloads a
# browser build of its own (no `playwright install`): Playwright for Python drives
# this system chromium through executable_path. The Python package `playwright`
# comes from the project's test extras (pip install -e '.[test]').
#
# Exits 0 even when it cannot install (no root, no apt-get, no network): the test
# then skips with a reason that says how to enable it.
set -u

find_chromium() {
  for c in "${PEFTLAB_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
  done
  return 1
}

if path=$(find_chromium); then
  echo "install_browser: chromium already present at $path"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; install Chromium yourself and set PEFTLAB_CHROMIUM=/path/to/chromium" \
       "(the browser test is skipped until then)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install_browser: not root and no password-less sudo; run 'sudo apt-get install chromium'" \
         "to enable the browser test (it is skipped until then)"
    exit 0
  fi
fi

LOG="${TMPDIR:-/tmp}/peftlab-install-browser.log"
echo "install_browser: installing Debian chromium (apt-get update, then install; log in $LOG)"
if { $SUDO apt-get update -qq \
     && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
          chromium fonts-dejavu-core fonts-noto-color-emoji; } >"$LOG" 2>&1; then
  if path=$(find_chromium); then
    echo "install_browser: chromium installed at $path ($("$path" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
  fi
fi
tail -n 15 "$LOG" 2>/dev/null
echo "install_browser: could not install chromium; the browser test will be skipped" \
     "(install Debian's 'chromium' package, or set PEFTLAB_CHROMIUM=/path/to/chromium)"
exit 0
