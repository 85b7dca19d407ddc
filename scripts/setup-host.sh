#!/usr/bin/env bash
# Distribution packages and kernel plumbing that tcpwatch needs, installed only when missing,
# so that a second run costs a few dpkg queries. Debian/Ubuntu; run as root.
#   scripts/setup-host.sh          what `make run` needs
#   scripts/setup-host.sh --test   plus what the tests use (prometheus, promtool, bpftool, openssl,
#                                  podman, runc, containerd and CNI plugins for the container tests,
#                                  chromium and chromedriver for the web page test, mmdebstrap
#                                  for the image test)
#   scripts/setup-host.sh --bench  plus node_exporter, which the benchmarks compare against
set -euo pipefail

packages=(python3 python3-venv python3-bpfcc iproute2)
[ "${1:-}" = "--bench" ] && packages+=(prometheus-node-exporter)
[ "${1:-}" = "--test" ] && packages+=(prometheus bpftool openssl podman runc containerd containernetworking-plugins gcc libc6-dev chromium chromium-driver mmdebstrap tcpdump iptables)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

kernel=$(uname -r)
# Kernel headers only where the kernel has no BTF: there the classic tracepoints compile
# against them. With BTF tcpwatch compiles against its own bundled include tree. The tests
# install them anyway, to exercise the no-BTF path and compare the two trees.
need_headers=1
[ -e /sys/kernel/btf/vmlinux ] && [ "${1:-}" != "--test" ] && need_headers=
headers_ok() {  # bcc needs both halves: build (generated, arch) and source (common)
    [ -e "/lib/modules/$kernel/build/include/generated/autoconf.h" ] &&
    [ -e "/lib/modules/$kernel/source/include/linux/kconfig.h" ]
}
if [ -n "$need_headers" ] && ! headers_ok; then
    if [ "${#missing[@]}" -gt 0 ] || ! ls -d /lib/modules/*/build >/dev/null 2>&1; then
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

if [ -n "$need_headers" ] && ! headers_ok; then
    # Reuse the build/source links Debian made for the kernel whose headers it installed
    # (its headers are split into an arch part, build, and a common part, source).
    donor=$(ls -d /lib/modules/*/build 2>/dev/null | grep -v "/$kernel/" | sort -V | tail -n 1)
    donor=${donor%/build}
    [ -n "$donor" ] || { echo "setup: no kernel headers found" >&2; exit 1; }
    echo "setup: no headers for kernel $kernel; using those of $(basename "$donor") (tracepoint programs only)"
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$(readlink -f "$donor/build")" "/lib/modules/$kernel/build"
    ln -sfn "$(readlink -f "$donor/source" 2>/dev/null || readlink -f "$donor/build")" "/lib/modules/$kernel/source"
fi

if ! mountpoint -q /sys/kernel/tracing; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: warning: cannot mount tracefs on /sys/kernel/tracing"
fi
