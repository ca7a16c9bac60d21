#!/usr/bin/env bash
# Install Debian's Chromium for the real-browser test (tests/test_browser.py), if it is
# missing and we can: as root with apt-get (CI), or with passwordless sudo. Never fails
# the caller: when Chromium cannot be installed the reason goes to
# build/chromium-install.log and the browser test skips, quoting it.
cd "$(dirname "$0")/.."
mkdir -p build
log=build/chromium-install.log
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  rm -f "$log"; exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no apt-get on this machine: install Chromium yourself to run the browser test" > "$log"; exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "not root and no passwordless sudo: run 'sudo apt-get install chromium' to run the browser test" > "$log"; exit 0
fi
echo "installing chromium for the browser test (apt-get, about a minute)..."
if { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium; } > "$log" 2>&1; then
  rm -f "$log"
else
  echo "apt-get install chromium failed (see above)" >> "$log"
fi
exit 0
