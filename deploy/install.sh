#!/bin/sh
# Installs sluice as a service: a release binary, an example configuration
# (never overwritten) and the systemd units. Running it again is harmless.
#
#   deploy/install.sh                 build (swift build -c release) and install
#   deploy/install.sh --binary PATH   install an already built binary
#   deploy/install.sh --uninstall     remove binary and units (keeps /etc/sluice)
#   deploy/install.sh --uninstall --purge   also remove /etc/sluice
#
# DESTDIR installs under another root (packaging, tests); PREFIX defaults to /usr/local.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
bin="$DESTDIR$PREFIX/bin"
doc="$DESTDIR$PREFIX/share/doc/sluice"
etc="$DESTDIR/etc/sluice"
units="$DESTDIR/etc/systemd/system"
binary=""
action=install
purge=no

while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

if [ "$action" = uninstall ]; then
    if systemd_running; then systemctl disable --now sluice.service 2>/dev/null || true; fi
    rm -f "$bin/sluice" "$units/sluice.service" "$units/sluice@.service"
    rm -rf "$doc"
    if [ "$purge" = yes ]; then rm -rf "$etc"; fi
    if systemd_running; then systemctl daemon-reload; fi
    echo "sluice removed"
    exit 0
fi

if [ -z "$binary" ]; then
    (cd "$root" && swift build -c release)
    binary="$root/.build/release/sluice"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

install -d -m 0755 "$bin" "$doc" "$units"
install -d -m 0750 "$etc"
install -m 0755 "$binary" "$bin/sluice.new" && mv -f "$bin/sluice.new" "$bin/sluice"
install -m 0644 "$here/systemd/sluice.service" "$here/systemd/sluice@.service" "$units/"
install -m 0644 "$root/README.md" "$doc/"
if [ ! -e "$etc/sluice.yaml" ]; then
    install -m 0640 "$here/sluice.yaml" "$etc/sluice.yaml"
    echo "example configuration: $etc/sluice.yaml (edit the backends)"
fi
"$bin/sluice" check -c "$etc/sluice.yaml" >/dev/null || echo "note: $etc/sluice.yaml does not validate yet: sluice check -c $etc/sluice.yaml" >&2
if systemd_running; then
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now sluice"
else
    echo "installed under ${DESTDIR:-/}"
fi
