#!/usr/bin/env bash
# Debian packages some tests use: chromium (browser tests through Playwright) and prometheus (promtool for
# the alert rules). Never fails the build: without root or apt-get, or if apt fails, those tests skip.
set -u
need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: cannot install ${need[*]} (needs root and apt-get); browser / promtool tests will skip" >&2
  exit 0
fi
# RUNLEVEL=1: the packages' init scripts must not start daemons (prometheus) on a machine without systemd.
export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
apt=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
log=$(mktemp)
echo "test-deps: installing ${need[*]} with apt-get" >&2
if ! "${apt[@]}" install --no-install-recommends "${need[@]}" >"$log" 2>&1; then
  "${apt[@]}" update >>"$log" 2>&1 || true
  for pkg in "${need[@]}"; do
    if ! "${apt[@]}" install --no-install-recommends "$pkg" >>"$log" 2>&1; then
      echo "warning: apt-get could not install $pkg; the tests needing it will skip" >&2
      tail -n 5 "$log" >&2
    fi
  done
fi
rm -f "$log"
exit 0
