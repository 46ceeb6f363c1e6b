"""What /proc/PID/status says about a process's confinement (the sandbox, issue 17)."""
from __future__ import annotations

CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def unconfined(pid: int) -> list[str]:
    """What keeps PID from being a confined worker: [] when seccomp filters it (Seccomp: 2), no_new_privs
    is set and every capability set is empty."""
    st = status(pid)
    wrong = [f"Seccomp: {st.get('Seccomp')}"] if st.get("Seccomp") != "2" else []
    wrong += [f"NoNewPrivs: {st.get('NoNewPrivs')}"] if st.get("NoNewPrivs") != "1" else []
    return wrong + [f"{name}: {st[name]}" for name in CAP_SETS if int(st[name], 16) != 0]
