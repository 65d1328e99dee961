#!/usr/bin/env bash
# Install Debian's chromium for the web demo's browser test (tests/test_web_server.py), which drives it
# through Playwright (Playwright never downloads a browser of its own), and a small CJK font so that the
# page's Chinese prompts render. Idempotent and quiet: nothing to do when both are there. Where they
# cannot be installed (not root, no apt-get, no network) it says so in one line and exits 0: the browser
# test then skips, naming the reason.
set -uo pipefail
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || packages+=(fonts-wqy-microhei)
[ ${#packages[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_browser: cannot install ${packages[*]} here (needs root and apt-get)" >&2
  exit 0
fi
log="$(mktemp)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
  echo "setup_browser: apt-get install ${packages[*]} failed (last line: $(tail -n 1 "$log"))" >&2
fi
rm -f "$log"
exit 0
