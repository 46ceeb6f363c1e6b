"""Which vhostsplice a benchmark measures, and a check that its worker starts before the first sample.

Default: the INSTALLED package (`pip install .` builds its C core), started as `python -P -m vhostsplice`
with the benchmark's own Python, so a source checkout in the working directory cannot shadow it. A
source tree only when asked (`dpdk_bench.py --tree DIR`: a copy whose core was built in place with
`python3 setup.py build_ext --inplace`). A clean clone has no compiled core, so measuring the checkout
by default measured nothing: every sample failed and the tables came out empty.

Importing this module also puts tests/ on sys.path for the benchmarks' use of the test harness
(tests/support: netns, testpmd, waiting), and nothing else: vhostsplice itself comes from site-packages.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

TREE: Path | None = None            # a source tree with a built core, or None: the installed package


def use_tree(tree: str | os.PathLike | None) -> None:
    """Measure the vhostsplice of TREE (None: the installed package)."""
    global TREE
    TREE = Path(tree).resolve() if tree else None


def argv() -> list[str]:
    """The command that starts the measured vhostsplice (append `run ...`)."""
    return [sys.executable, "-P", "-m", "vhostsplice"]


def env() -> dict[str, str]:
    """The environment a worker starts with: PYTHONPATH only when a source tree is measured."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(base, PYTHONPATH=str(TREE)) if TREE else base


def package_dir() -> str:
    """Where the measured worker imports vhostsplice from (for the results' facts)."""
    r = subprocess.run([*argv()[:2], "-c", "import os, vhostsplice; print(os.path.dirname(vhostsplice.__file__))"],
                       capture_output=True, text=True, timeout=30, env=env())
    return r.stdout.strip() or "?"


def preflight(timeout: float = 60.0) -> None:
    """Start one real worker (`run --host-fd` on a socketpair, no root needed), wait until it listens,
    stop it and check it exits 0. Any failure ends the benchmark here, with the worker's stderr, before
    a single sample is taken."""
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with here, there, tempfile.TemporaryDirectory(prefix="vsbench-preflight-") as d:
        sock = Path(d) / "preflight.sock"
        cmd = [*argv(), "run", "--socket-path", str(sock), "--host-fd", str(there.fileno())]
        proc = subprocess.Popen(cmd, pass_fds=[there.fileno()], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
        deadline = time.monotonic() + timeout
        while not sock.is_socket() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        listening = sock.is_socket()
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if listening and proc.returncode == 0:
            return
        where = f"the tree {TREE}" if TREE else "the installed package (pip install . builds its C core)"
        sys.exit(f"stopping before the first sample: the vhostsplice worker from {where} did not "
                 f"{'stop cleanly' if listening else 'start'} (exit {proc.returncode}).\n"
                 f"command: {' '.join(cmd)}\n{err.decode(errors='replace')[-3000:]}")


def peer_image(column):
    """(the guest image of a test-matrix column, booting that column's QEMU, its Qemu) or (None, why not):
    tests/support/peers.py finds (or unpacks) the QEMU, tests/support/guest.py builds the image."""
    import dataclasses
    from support import guest as G
    from support.peers import find_qemu
    qemu, missing = find_qemu(column)
    if qemu is None:
        return None, missing
    return (dataclasses.replace(G.build_image(kernel=column.kernel), qemu=qemu.argv), qemu), None


def write_results(out: str | os.PathLike, stem: str, results: dict, md: str) -> Path:
    """Write a benchmark's results as OUT/STEM.json (every sample) and OUT/STEM.md (its tables), make OUT
    if it is missing, and print the tables; returns the markdown file's path."""
    import json
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md)
    return out / f"{stem}.md"
