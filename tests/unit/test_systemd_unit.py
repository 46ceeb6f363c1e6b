"""contrib/systemd/vhostsplice@.service as systemd reads it: `systemd-analyze verify` (Debian's systemd)
accepts it without a single warning (an unknown key, an unparsable value, a bad specifier). The unit
names /usr/local/bin/vhostsplice (where Debian's pip puts console scripts); the check points ExecStart at
the vhostsplice installed for this Python instead, and changes nothing else."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from support.peers import require_peer

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "vhostsplice@.service"
UNIT_BINARY = "/usr/local/bin/vhostsplice"


def test_systemd_reads_the_template_unit_without_a_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    require_peer(None if analyze else "systemd-analyze (Debian's systemd package)")
    installed = Path(sys.executable).parent / "vhostsplice"
    require_peer(None if installed.exists() else f"{installed}: pip install . installs it")
    text = UNIT.read_text()
    assert f"ExecStart={UNIT_BINARY} run " in text, "the unit's ExecStart changed: update this test"
    (tmp_path / UNIT.name).write_text(text.replace(f"ExecStart={UNIT_BINARY} ", f"ExecStart={installed} "))
    proc = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "vhostsplice@vm1-net0.service")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, SYSTEMD_LOG_COLOR="0"))
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stdout + proc.stderr
