#!/usr/bin/env bash
# The test command: installs what the tests need (idempotently), installs this package, runs pytest.
#   bash tests/run.sh [PYTEST ARGS...]      e.g. bash tests/run.sh -k hostfd -x
# As root it installs Debian packages (apt-get update only when something is missing); as another user
# it installs nothing from apt and the tests that need root skip themselves.
# Environment: PYTHON (default python3), VHOSTSPLICE_NO_INSTALL=1 skips all installation.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(dpdk dpdk-dev iproute2 bats gcc libc6-dev python3-dev python3-pip procps)
PIP_PACKAGES=(pytest pytest-timeout pyroute2 cffi)
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

log() { printf '== tests/run.sh: %s\n' "$*" >&2; }

# The QEMU guest tests name their own host packages (qemu-system-x86, iperf3, ...).
if [[ -f tests/guest/build.sh ]]; then
    read -r -a GUEST_PACKAGES <<<"$(bash tests/guest/build.sh --deps)"
    APT_PACKAGES+=("${GUEST_PACKAGES[@]}")
fi

missing_apt_packages() {
    local p
    for p in $(printf '%s\n' "${APT_PACKAGES[@]}" | sort -u); do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

install_apt() {
    local missing
    missing=$(missing_apt_packages)
    if [[ -z $missing ]]; then log "apt packages present"; return; fi
    if [[ $(id -u) -ne 0 ]]; then log "not root: not installing missing packages:" $missing; return; fi
    log "installing:" $missing
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
}

install_python() {
    # Debian's own python3 is "externally managed" (PEP 668); as root on a test machine we install anyway.
    if "$PYTHON" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(
            os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        export PIP_BREAK_SYSTEM_PACKAGES=1
    fi
    "$PYTHON" -m pip install -q "${PIP_PACKAGES[@]}"
    log "pip install . (builds the cffi extension)"
    if ! "$PYTHON" -m pip install -q .; then
        log "FAILED: 'pip install .' did not build/install vhostsplice"
        exit 1
    fi
}

if [[ ${VHOSTSPLICE_NO_INSTALL:-0} != 1 ]]; then
    install_apt
    install_python
fi

# -P: do not put the current directory first on sys.path, so the tests import the INSTALLED
# vhostsplice (with its compiled extension), not the source tree; pytest.ini adds tests/ for helpers.
# No path given: pytest.ini's testpaths (tests/) applies; given paths replace it.
log "$PYTHON -P -m pytest -v -ra $*"
set +e
"$PYTHON" -P -m pytest -v -ra "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    log "FAILED: pytest collected no tests (exit 5): check the test paths and arguments"
    exit 1
fi
exit "$rc"
