#!/usr/bin/env bash
# Install the Debian packages the tests drive, when they are not there yet: `chromium` for the
# browser test of the serving page (tests/serve/test_page.py; Playwright drives this binary and
# never downloads a browser of its own) and `redis-server` for the GCS fault-tolerance test
# (tests/ray_jobs/test_redis_gcs.py, ray_jobs/redis_gcs.py). Neither is started here.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-system: installing ${missing[*]} (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
