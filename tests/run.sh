#!/usr/bin/env bash
# The test command: installs what the tests need (idempotently), installs this package, lints the tree
# (ruff, shellcheck), runs pytest, then the shell suite (bats tests/shell).
#   bash tests/run.sh [PYTEST ARGS...]      e.g. bash tests/run.sh -k hostfd -x
# As root it installs Debian packages (apt-get update only when something is missing); as another user
# it installs nothing from apt and the tests that need root skip themselves.
# Environment: PYTHON (default python3), VHOSTSPLICE_NO_INSTALL=1 skips all installation,
# VHOSTSPLICE_BATS=0 skips the shell suite (tests/shell, run with bats after pytest),
# VHOSTSPLICE_LINT=0 skips the lint step (ruff, shellcheck and clang-format, run before pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(dpdk dpdk-dev iproute2 bats gcc libc6-dev python3-dev python3-pip procps libseccomp2
              libvirt-daemon-system libvirt-clients   # libvirt: tests/interop/test_libvirt.py
              shellcheck clang-format)                 # the lint step
# prometheus_client: its parser checks --stats-format prometheus; ruff: the lint step (pinned: a newer
# ruff may find more in the same rules)
PIP_PACKAGES=(pytest pytest-timeout pyroute2 cffi prometheus_client ruff==0.17.6)
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
    # shellcheck disable=SC2086  # split on purpose: the package list (one a line) on one log line
    if [[ $(id -u) -ne 0 ]]; then log "not root: not installing missing packages:" $missing; return; fi
    # shellcheck disable=SC2086  # as above
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

# -- the peer matrix (tests/support/peers.py): QEMU 10.0 and Linux 6.12 come from bookworm-backports -------
# The backports suite is added beside the system's sources (same archive URI as debian.sources' bookworm
# entry; priority 100, so nothing is taken from it unless asked). QEMU 10 is unpacked into the guest cache
# by tests/guest/qemu.sh (never installed: the system's QEMU 7.2 stays), the 6.12 kernel by build.sh.
BACKPORTS_LIST=/etc/apt/sources.list.d/vhostsplice-bookworm-backports.sources
add_backports_source() {
    if apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'; then log "bookworm-backports known to apt"; return; fi
    if [[ $(id -u) -ne 0 ]]; then log "not root: not adding bookworm-backports"; return; fi
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' \
              /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n $uri ]] || { log "FAILED: no bookworm URI in /etc/apt/sources.list.d/debian.sources"; return 1; }
    log "adding bookworm-backports ($uri) as $BACKPORTS_LIST"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$uri" /usr/share/keyrings/debian-archive-keyring.gpg >"$BACKPORTS_LIST"
    apt-get update -q
}

fetch_peers() {       # QEMU 10 unpacked, both guest images built (cached: fast when present)
    [[ $(id -u) -eq 0 ]] || { log "not root: the peer matrix is not fetched"; return; }
    log "peers: $(bash tests/guest/qemu.sh | tr '\n' ' ')"
    local series
    for series in $(bash tests/guest/build.sh --kernels); do
        log "guest image for Linux $series: $(bash tests/guest/build.sh --kernel "$series" | tr '\n' ' ')"
    done
}

if [[ ${VHOSTSPLICE_NO_INSTALL:-0} != 1 ]]; then
    install_apt
    add_backports_source
    install_python
    fetch_peers
fi

# The lint step (issue 14): ruff over the Python (pyproject.toml's [tool.ruff]: E, F, W, lines up to 120),
# the shell scripts through shellcheck (.shellcheckrc; the .bats files are left out: shellcheck 0.9 does
# not read them) and clang-format over the C (.clang-format; `clang-format -i FILE` applies it). Before
# pytest; its findings fail the run at the end, after pytest and bats have run.
LINT_PYTHON=(vhostsplice tests benchmarks bin/vhostsplice setup.py)
LINT_SHELL=(bin/vhostsplice-supervise bin/vhostsplice-vmm-example tests/run.sh .ci/run
            tests/guest/*.sh tests/guest/init tests/shell/*.bash)
mapfile -t LINT_C < <(git ls-files '*.c' '*.h' 2>/dev/null || find vhostsplice tests -name '*.[ch]')
run_lint() {
    local lrc=0 out
    local ruff=()
    if "$PYTHON" -c 'import ruff' 2>/dev/null; then ruff=("$PYTHON" -m ruff)
    elif command -v ruff >/dev/null; then ruff=(ruff)
    else log "FAILED: lint: ruff is not installed (pip install ruff)"; lrc=1
    fi
    if [[ ${#ruff[@]} -gt 0 ]] && ! out=$("${ruff[@]}" check -q --output-format concise "${LINT_PYTHON[@]}" 2>&1); then
        printf '%s\n' "$out"
        lrc=1
    fi
    if ! command -v shellcheck >/dev/null; then
        log "FAILED: lint: shellcheck is not installed (Debian package shellcheck)"
        lrc=1
    elif ! out=$(shellcheck -f gcc "${LINT_SHELL[@]}" 2>&1); then
        printf '%s\n' "$out"
        lrc=1
    fi
    if ! command -v clang-format >/dev/null; then
        log "FAILED: lint: clang-format is not installed (Debian package clang-format)"
        lrc=1
    elif ! out=$(clang-format --dry-run -Werror "${LINT_C[@]}" 2>&1); then
        printf '%s\n' "$out"
        lrc=1
    fi
    if [[ $lrc -eq 0 ]]; then echo "lint: ok"; else log "FAILED: lint (the findings above)"; fi
    return "$lrc"
}
lrc=0
if [[ ${VHOSTSPLICE_LINT:-1} != 0 ]]; then
    log "lint: ruff check ${LINT_PYTHON[*]}; shellcheck ${LINT_SHELL[*]}; clang-format ${LINT_C[*]}"
    run_lint || lrc=1
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
    rc=1
fi

# The shell suite (tests/shell/*.bats): `vhostsplice run` and `drive` as a user script runs them, and
# bin/vhostsplice-supervise. It runs after pytest whatever pytest said; the script fails if either
# failed. VHOSTSPLICE_BATS=0 skips it (e.g. while iterating on one pytest test).
run_bats() {
    if ! command -v bats >/dev/null; then
        log "FAILED: bats is not installed (Debian package bats)"
        return 1
    fi
    # The console script pip installed for $PYTHON (the pyenv shim or another Python's would do too, slower
    # or not the same install); without one, the installed package through $PYTHON -P.
    local scripts
    scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    if [[ -z ${VHOSTSPLICE:-} ]]; then
        if [[ -x $scripts/vhostsplice ]]; then VHOSTSPLICE=$scripts/vhostsplice; else VHOSTSPLICE="$PYTHON -P -m vhostsplice"; fi
    fi
    export VHOSTSPLICE PYTHON
    log "bats --tap --timing tests/shell (VHOSTSPLICE=$VHOSTSPLICE)"
    local out brc
    out=$(mktemp)
    set +e
    bats --tap --timing tests/shell | tee "$out"
    brc=${PIPESTATUS[0]}
    set -e
    local passed failed skipped
    skipped=$(grep -c '^ok .* # skip' "$out" || true)
    passed=$(( $(grep -c '^ok ' "$out" || true) - skipped ))
    failed=$(grep -c '^not ok ' "$out" || true)
    rm -f "$out"
    echo "bats: $passed passed, $failed failed, $skipped skipped"
    if [[ $brc -ne 0 || $failed -ne 0 ]]; then
        log "FAILED: bats exited $brc"
        return 1
    fi
    if [[ $passed -eq 0 ]]; then
        log "FAILED: bats ran no test"
        return 1
    fi
}

brc=0
if [[ ${VHOSTSPLICE_BATS:-1} != 0 ]]; then
    run_bats || brc=1
fi
if [[ $rc -ne 0 ]]; then
    exit "$rc"
fi
if [[ $brc -ne 0 ]]; then
    exit "$brc"
fi
exit "$lrc"
