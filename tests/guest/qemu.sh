#!/usr/bin/env bash
# Unpacks a QEMU from Debian's bookworm-backports beside the system's QEMU (which stays: the peer matrix runs
# both). Never installs: the .debs are fetched with `apt-get download PKG/bookworm-backports` and unpacked
# with `dpkg -x`; that qemu-system-x86_64 runs against bookworm's libraries, with `-L DIR/usr/share/qemu`
# for its own option ROMs and BIOS (/work/shared/interop.md section 3).
#
#   tests/guest/qemu.sh [CACHE_DIR]     unpack (or reuse) CACHE_DIR/qemu-bpo/; print qemu=PATH datadir=PATH version=V
#
# CACHE_DIR defaults as build.sh's (VHOSTSPLICE_GUEST_CACHE, else /var/cache/vhostsplice-guest as root, else
# ~/.cache/vhostsplice-guest). Needs the bookworm-backports apt source (tests/run.sh adds it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=cache.sh
. "$HERE/cache.sh"

SUITE=bookworm-backports
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)

log() { printf 'guest/qemu.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CACHE=$(guest_cache_dir "${1:-}")
OUT=$CACHE/qemu-bpo
STAMP=$OUT/qemu.env
exec 9>"$CACHE/.qemu.lock"
flock 9

# The version the suite has now (cached result reused while it is the same).
VERSION=$(apt-cache madison qemu-system-x86 2>/dev/null | awk -v s="$SUITE" '$0 ~ s"/main" {print $3; exit}')
[[ -n $VERSION ]] || die "apt knows no qemu-system-x86 in $SUITE (add the suite: tests/run.sh does it)"
if [[ -s $STAMP ]] && grep -qx "deb=$VERSION" "$STAMP"; then
    grep -v '^deb=' "$STAMP"
    exit 0
fi

WORK=$(mktemp -d "$CACHE/qemu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
for pkg in "${PACKAGES[@]}"; do
    log "apt-get download $pkg/$SUITE"
    (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$pkg/$SUITE" >&2) \
        || die "apt-get download $pkg/$SUITE failed"
done
mkdir -p "$WORK/root"
for deb in "$WORK"/*.deb; do dpkg -x "$deb" "$WORK/root"; done
BIN=$WORK/root/usr/bin/qemu-system-x86_64
[[ -x $BIN ]] || die "no usr/bin/qemu-system-x86_64 in the unpacked packages"
rm -rf "$OUT"
mv "$WORK/root" "$OUT"
QVER=$("$OUT/usr/bin/qemu-system-x86_64" --version | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p')
[[ -n $QVER ]] || die "$OUT/usr/bin/qemu-system-x86_64 --version does not run"
{
    echo "qemu=$OUT/usr/bin/qemu-system-x86_64"
    echo "datadir=$OUT/usr/share/qemu"
    echo "version=$QVER"
    echo "deb=$VERSION"
} >"$STAMP"
log "unpacked QEMU $QVER ($VERSION) into $OUT"
grep -v '^deb=' "$STAMP"
