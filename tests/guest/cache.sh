# shellcheck shell=bash
# Sourced by build.sh and qemu.sh: the one place the guest cache directory is chosen.
# guest_cache_dir [DIR]: DIR if given, else $VHOSTSPLICE_GUEST_CACHE, else /var/cache/vhostsplice-guest as
# root, else ~/.cache/vhostsplice-guest. Creates it and prints its absolute path.
guest_cache_dir() {
    local dir=${1:-${VHOSTSPLICE_GUEST_CACHE:-}}
    if [[ -z $dir ]]; then
        if [[ $(id -u) -eq 0 ]]; then dir=/var/cache/vhostsplice-guest; else dir=$HOME/.cache/vhostsplice-guest; fi
    fi
    mkdir -p "$dir" && (cd "$dir" && pwd)
}
