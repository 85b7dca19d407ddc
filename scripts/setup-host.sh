#!/usr/bin/env bash
# Distribution packages and kernel plumbing that tcpwatch needs, installed only when missing,
# so that a second run costs a few dpkg queries. Debian/Ubuntu; run as root.
#   scripts/setup-host.sh          what `make run` needs
#   scripts/setup-host.sh --test   plus what the tests use (prometheus's promtool)
set -euo pipefail

packages=(python3 python3-venv python3-bpfcc iproute2)
[ "${1:-}" = "--test" ] && packages+=(prometheus)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

kernel=$(uname -r)
headers_ok() { [ -e "/lib/modules/$kernel/build/include/linux/kconfig.h" ]; }
if ! headers_ok; then
    if [ "${#missing[@]}" -gt 0 ] || ! ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" >/dev/null 2>&1; then
        updated=1
        apt-get update -qq
        # The running kernel's own headers when the distribution has them (a stock kernel);
        # otherwise the distribution's current headers (see the README: only tracepoint
        # arguments are read, whose layout comes from tracefs, so mismatched headers are safe).
        if apt-cache show "linux-headers-$kernel" >/dev/null 2>&1; then
            missing+=("linux-headers-$kernel")
        else
            missing+=("linux-headers-$(dpkg --print-architecture)")
        fi
    fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    [ -n "${updated:-}" ] || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! headers_ok; then
    newest=$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture)" | sort -V | tail -n 1)
    echo "setup: no headers for kernel $kernel; linking $newest (tracepoint programs only)"
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$newest" "/lib/modules/$kernel/build"
    ln -sfn "$newest" "/lib/modules/$kernel/source"
fi

if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: warning: cannot mount tracefs on /sys/kernel/tracing"
fi
