#!/usr/bin/env bash
# Install tcpwatch on this host as a systemd service, from this checkout. Root; idempotent:
# a second run upgrades the package and restarts the service, and keeps your flags.
#
#   deploy/install.sh               install (or upgrade), enable and start
#   deploy/install.sh --uninstall   stop, disable, remove the unit and /opt/tcpwatch
#                                   (/etc/default/tcpwatch, your flags, is kept)
#
# Where things go (override for a test or a packaging root):
#   TCPWATCH_PREFIX=/opt/tcpwatch   the venv (system Python, --system-site-packages for bcc)
#   TCPWATCH_UNIT_DIR=/etc/systemd/system
#   TCPWATCH_DEFAULTS=/etc/default/tcpwatch
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${TCPWATCH_PREFIX:-/opt/tcpwatch}
unit_dir=${TCPWATCH_UNIT_DIR:-/etc/systemd/system}
defaults=${TCPWATCH_DEFAULTS:-/etc/default/tcpwatch}
unit="$unit_dir/tcpwatch.service"

say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 2; }
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

case "${1:-}" in
    "") action=install ;;
    --uninstall) action=uninstall ;;
    *) die "unknown argument '$1' (use no argument to install, or --uninstall)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root"

if [ "$action" = uninstall ]; then
    if systemd_running && systemctl list-unit-files tcpwatch.service >/dev/null 2>&1; then
        systemctl disable --now tcpwatch.service 2>/dev/null || true
    fi
    rm -f "$unit"
    rm -rf "$prefix"
    systemd_running && systemctl daemon-reload
    say "removed $unit and $prefix; kept $defaults"
    exit 0
fi

# Distribution packages (python3-bpfcc, never bcc from PyPI), kernel headers, tracefs.
"$here/scripts/setup-host.sh"

mkdir -p "$prefix"
[ -x "$prefix/venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$here"
install -m 0644 "$here/README.md" "$prefix/README.md"

# The unit, pointed at this prefix's venv.
mkdir -p "$unit_dir"
sed "s|/opt/tcpwatch|$prefix|g" "$here/systemd/tcpwatch.service" > "$unit.new"
chmod 0644 "$unit.new"
mv "$unit.new" "$unit"
if [ -e "$defaults" ]; then
    say "keeping $defaults"
else
    mkdir -p "$(dirname "$defaults")"
    install -m 0644 "$here/systemd/tcpwatch.default" "$defaults"
fi

version=$("$prefix/venv/bin/tcpwatch" --version 2>/dev/null || echo "tcpwatch ?")
if systemd_running; then
    systemctl daemon-reload
    systemctl enable tcpwatch.service
    systemctl restart tcpwatch.service
    say "$version installed and running: systemctl status tcpwatch"
else
    say "$version installed in $prefix; systemd is not running here, so start it with:"
    say "  $prefix/venv/bin/tcpwatch run \$TCPWATCH_ARGS   (flags in $defaults)"
fi
