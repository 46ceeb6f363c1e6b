#!/usr/bin/env bash
# Builds the test guest: Debian's cloud kernel (unmodified) and a busybox initramfs that loads the virtio
# network driver, configures eth0, runs the test script QEMU hands it through fw_cfg and powers off.
#
#   tests/guest/build.sh [--kernel SERIES] [CACHE_DIR]   build (or reuse) CACHE_DIR/linux-SERIES/{vmlinuz,initramfs.cpio.gz}
#   tests/guest/build.sh --kernels        print the kernel series it can build (KERNEL_SUITE below), one line
#   tests/guest/build.sh --deps           print the Debian packages the guest tests need installed, one line
#
# SERIES (default 6.1) picks the suite whose linux-image-cloud-amd64 names the kernel: 6.1 from bookworm,
# 6.12 from bookworm-backports (tests/run.sh adds that apt source). CACHE_DIR defaults as cache.sh says.
# Idempotent and cached: .debs are kept in CACHE_DIR/linux-SERIES/debs, and when the inputs (this folder's
# files, the kernel package name, the iperf3 binary) have not changed the script only prints the result
# (well under a second). It never installs the kernel: the .deb is fetched with `apt-get download` and
# unpacked with `dpkg -x`. VS_GUEST_KERNEL_PKG=linux-image-X-cloud-amd64 picks another package.
# busybox-static is downloaded the same way. iperf3 comes from the host (it must be installed: the host side
# of the tests runs it too) with the libraries ldd names.
#
# Output (stdout, last lines, KEY=VALUE): kernel=PATH initrd=PATH kver=VERSION; the same in image.env.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=cache.sh
. "$HERE/cache.sh"
# Kernel series -> the suite whose linux-image-cloud-amd64 depends on it (the peer matrix's guest kernels).
declare -A KERNEL_SUITE=([6.1]=bookworm [6.12]=bookworm-backports)
# Modules the guest loads (the closure over modinfo's depends= is taken, then ordered dependencies first).
WANTED_MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover
                virtio_net qemu_fw_cfg)
# Debian packages: installed on the host (tools used here and by the tests) / only downloaded here.
HOST_PACKAGES=(qemu-system-x86 iperf3 cpio kmod xz-utils zstd gzip iproute2 iputils-ping)
# shellcheck disable=SC2034  # not read: it lists for the reader what fetch_deb is called for below
DOWNLOADED=(busybox-static "linux-image-*-cloud-amd64 (via linux-image-cloud-amd64)")

log() { printf 'guest/build.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() { echo "usage: $0 [--kernel SERIES] [CACHE_DIR] | --kernels | --deps" >&2; exit 2; }
case ${1:-} in
    --deps) echo "${HOST_PACKAGES[*]}"; exit 0 ;;
    --kernels) printf '%s\n' "${!KERNEL_SUITE[@]}" | sort -V | tr '\n' ' ' | sed 's/ $/\n/'; exit 0 ;;
esac
SERIES=6.1
if [[ ${1:-} == --kernel ]]; then
    [[ $# -ge 2 ]] || usage
    SERIES=$2
    shift 2
fi
[[ $# -le 1 ]] || usage
[[ -n ${KERNEL_SUITE[$SERIES]:-} ]] || die "unknown kernel series $SERIES (known: ${!KERNEL_SUITE[*]})"
SUITE=${KERNEL_SUITE[$SERIES]}

CACHE=$(guest_cache_dir "${1:-}")/linux-$SERIES
mkdir -p "$CACHE"
OUT_KERNEL=$CACHE/vmlinuz
OUT_INITRD=$CACHE/initramfs.cpio.gz
STAMP=$CACHE/image.env

# One build at a time per cache directory.
exec 9>"$CACHE/.lock"
flock 9

IPERF3=$(command -v iperf3 || true)
[[ -n $IPERF3 ]] || die "iperf3 is not installed (apt-get install ${HOST_PACKAGES[*]})"
INPUTS_KEY=$( { cat "$HERE/build.sh" "$HERE/init" "$HERE/vs.sh"; echo "$SERIES ${VS_GUEST_KERNEL_PKG:-}";
                sha256sum "$IPERF3"; } | sha256sum | cut -d' ' -f1)

if [[ -s $OUT_KERNEL && -s $OUT_INITRD && -s $STAMP ]] && grep -qx "key=$INPUTS_KEY" "$STAMP"; then
    grep -v '^key=' "$STAMP"
    exit 0
fi

missing=()
for tool in apt-get apt-cache dpkg cpio gzip modinfo ldd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (apt-get install ${HOST_PACKAGES[*]})"

# --- which kernel -----------------------------------------------------------------------------------------
kernel_package() {
    if [[ -n ${VS_GUEST_KERNEL_PKG:-} ]]; then echo "$VS_GUEST_KERNEL_PKG"; return; fi
    apt-cache depends "linux-image-cloud-amd64/$SUITE" 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1
}
KPKG=$(kernel_package)
if [[ -z $KPKG ]]; then
    log "apt-cache knows no linux-image-cloud-amd64: running apt-get update"
    apt-get update -q >&2 || die "apt-get update failed"
    KPKG=$(kernel_package)
fi
[[ -n $KPKG ]] || die "cannot resolve the cloud kernel package (apt-cache depends linux-image-cloud-amd64/$SUITE)"
KVER=${KPKG#linux-image-}
[[ -n ${VS_GUEST_KERNEL_PKG:-} || $KVER == "$SERIES".* ]] \
    || die "$SUITE's linux-image-cloud-amd64 is $KPKG, not Linux $SERIES (add the suite: tests/run.sh does it)"
log "kernel package $KPKG"

# --- downloads (cached) -----------------------------------------------------------------------------------
DEBS=$CACHE/debs
mkdir -p "$DEBS"
# shellcheck disable=SC2012  # ls for the glob: .deb names (PKG_VERSION_ARCH.deb) have no blanks, and ls
# sorts and fails (quietly here) when nothing matches
fetch_deb() {        # fetch_deb PACKAGE -> prints the .deb path (downloaded once)
    local pkg=$1 found
    found=$(ls "$DEBS/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    if [[ -z $found ]]; then
        log "apt-get download $pkg"
        (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) \
            || die "apt-get download $pkg failed"
        found=$(ls "$DEBS/${pkg}"_*.deb | head -n1)
    fi
    echo "$found"
}
KDEB=$(fetch_deb "$KPKG")
BDEB=$(fetch_deb busybox-static)

WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg -x "$KDEB" "$WORK/kernel"
dpkg -x "$BDEB" "$WORK/busybox"
VMLINUZ=$WORK/kernel/boot/vmlinuz-$KVER
MODDIR=$WORK/kernel/lib/modules/$KVER
[[ -f $VMLINUZ && -d $MODDIR ]] || die "$KDEB has no boot/vmlinuz-$KVER or lib/modules/$KVER"

# --- the root file system ---------------------------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/vsmod,lib64,lib/x86_64-linux-gnu}
cp "$WORK/busybox/bin/busybox" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$ROOT/bin/$applet"
done
ln -sf ../bin/busybox "$ROOT/sbin/init"
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0644 "$HERE/vs.sh" "$ROOT/lib/vs.sh"
# The kernel opens /dev/console for /init before devtmpfs is mounted (only root may make the node).
mknod -m 0600 "$ROOT/dev/console" c 5 1 2>/dev/null || log "not root: no /dev/console node in the initramfs"

# Modules: find each, read depends=, order dependencies first, store uncompressed (busybox insmod).
declare -A DEPENDS=() VISITED=()
ORDER=()
find_module() {
    local name=$1 f
    f=$(find "$MODDIR/kernel" \( -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" \
                                 -o -name "$name.ko.gz" \) -print -quit)
    if [[ -n $f ]]; then echo "$f"; return; fi
    # file names use - where module names use _ (or the other way round)
    find "$MODDIR/kernel" \( -name "${name//_/-}.ko*" -o -name "${name//-/_}.ko*" \) | head -n1
}
unpack_module() {    # unpack_module SRC DST
    case $1 in
        *.ko) cp "$1" "$2" ;;
        *.ko.xz) xz -dc "$1" >"$2" ;;
        *.ko.zst) zstd -qdc "$1" >"$2" ;;
        *.ko.gz) gzip -dc "$1" >"$2" ;;
        *) die "unknown module format: $1" ;;
    esac
}
visit() {
    local name=$1 dep src
    [[ ${VISITED[$name]:-} == visiting ]] && die "module dependency loop at $name"
    [[ -n ${VISITED[$name]:-} ]] && return
    src=$(find_module "$name")
    if [[ -z $src ]]; then
        # built into the kernel: nothing to load
        grep -q "/$name.ko" "$MODDIR/modules.builtin" 2>/dev/null || die "module $name not found in $KPKG"
        VISITED[$name]=builtin
        return
    fi
    unpack_module "$src" "$ROOT/lib/vsmod/$name.ko"
    DEPENDS[$name]=$(modinfo -F depends "$ROOT/lib/vsmod/$name.ko")
    VISITED[$name]=visiting
    for dep in ${DEPENDS[$name]//,/ }; do visit "$dep"; done
    VISITED[$name]=yes
    ORDER+=("$name")
}
for m in "${WANTED_MODULES[@]}"; do visit "$m"; done
printf '%s\n' "${ORDER[@]}" >"$ROOT/etc/vs-modules"
for m in "${ORDER[@]}"; do log "module $m depends=${DEPENDS[$m]:-}"; done
log "insmod order: ${ORDER[*]}"

# iperf3 and the libraries it links (at the paths ldd names, plus the multiarch directory the loader searches).
copy_with_libs() {
    local bin=$1 lib
    cp -L "$bin" "$ROOT/bin/$(basename "$bin")"
    for lib in $(ldd "$bin" | awk '/=> \// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
        [[ -e $ROOT/lib/x86_64-linux-gnu/$(basename "$lib") ]] || cp -L "$lib" "$ROOT/lib/x86_64-linux-gnu/"
    done
}
copy_with_libs "$IPERF3"
IPERF_VERSION=$("$IPERF3" --version | head -n1)

# --- pack -------------------------------------------------------------------------------------------------
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) >"$WORK/initrd"
cp "$VMLINUZ" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT_KERNEL"
mv -f "$WORK/initrd" "$OUT_INITRD"
{
    echo "kernel=$OUT_KERNEL"
    echo "initrd=$OUT_INITRD"
    echo "kver=$KVER"
    echo "series=$SERIES"
    echo "modules=${ORDER[*]}"
    echo "iperf3=$IPERF_VERSION"
    echo "key=$INPUTS_KEY"
} >"$STAMP.tmp"
mv -f "$STAMP.tmp" "$STAMP"
log "built $OUT_INITRD ($(du -k "$OUT_INITRD" | cut -f1) KiB) for $KVER"
grep -v '^key=' "$STAMP"
