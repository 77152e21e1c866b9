#!/usr/bin/env bash
# The Debian packages the tests drive for real, installed once per machine (root, or sudo):
#   chromium    the headless browser of the MLflow UI test (tests/test_browser.py), driven by Playwright
#   postgresql  the backend store of a team's MLflow server (`make server`, pipeline/server.py, tests/test_scale.py)
set -euo pipefail
PACKAGES=(chromium postgresql)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
