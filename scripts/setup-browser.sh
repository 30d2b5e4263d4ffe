#!/usr/bin/env bash
# Install Debian's Chromium for the browser test of the serving page (tests/test_serve_page.py),
# when it is not there yet. Playwright drives this binary; it never downloads a browser of its own.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-browser: installing chromium (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
