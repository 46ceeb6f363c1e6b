"""libvirt as its users run it: a libvirtd of our own (no systemd) and TCG domains with a vhost-user NIC.

Facts this relies on (measured on this machine kind, /work/shared/interop.md section 3):
- Debian's libvirt-daemon-system creates the `libvirt-qemu` user and group; its QEMU driver runs QEMU
  as that user, so the vhost-user socket must let that user in (never everyone: the back-end's
  --socket-group/--socket-mode/--allow-uid do it).
- `libvirtd --config FILE` with its own `unix_sock_dir` is a private daemon: it answers on
  `qemu:///system?socket=DIR/libvirt-sock` only, and is stopped by its own PID. Its QEMU driver still
  takes the machine's driver locks (/run/libvirt/*/driver.pid): one such daemon on a machine at a time.
- Its QEMU driver hands QEMU's stdio to virtlogd (`/run/libvirt/virtlogd-sock`): without systemd nobody
  starts that, so we do, as our own child, and stop it by PID.
- The guest's qemu_fw_cfg module finds fw_cfg through ACPI: `<features><acpi/></features>`.
- QEMU 7.2 under TCG crashes with vhost-user + MSI-X: `vectors=0` through `<qemu:override>` on the
  interface's alias (`ua-NAME`).
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

from support import guest as G
from support.procs import stop

LIBVIRTD, VIRTLOGD, VIRSH = "libvirtd", "virtlogd", "virsh"
VIRTLOGD_SOCK = Path("/run/libvirt/virtlogd-sock")   # where system-mode libvirtd looks for it (fixed)
QEMU_USER = "libvirt-qemu"          # Debian's libvirt runs QEMU as this user (and its group)
ALIAS = "ua-net0"
MAC = "52:54:00:5e:00:53"


def missing_tools() -> list[str]:
    """What the libvirt tests need and this machine lacks (tests/run.sh installs it)."""
    missing = [t for t in (LIBVIRTD, VIRTLOGD, VIRSH) if shutil.which(t) is None]
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        missing.append(f"user {QEMU_USER} (libvirt-daemon-system)")
    return missing + G.missing_tools()


def shared_dir(prefix: str) -> Path:
    """A new directory QEMU (running as libvirt-qemu) can reach: /tmp/PREFIX-XXXX, mode 0755, so the
    sockets and files in it are guarded by their own modes and groups, not by pytest's 0700 tmp_path."""
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    d.chmod(0o755)
    return d




def _wait(ready, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{what} (exit {proc.returncode}):\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.1)


class Libvirtd:
    """A private libvirtd (system mode, its own socket directory) and the virtlogd its QEMU driver needs,
    both our children, stopped by PID."""

    def __init__(self, workdir: Path):
        if VIRTLOGD_SOCK.exists():
            raise RuntimeError(f"{VIRTLOGD_SOCK} exists: another libvirt runs on this machine")
        self.dir = workdir
        with open(workdir / "virtlogd.stderr", "wb") as err:
            self.logd = subprocess.Popen([VIRTLOGD, "--pid-file", str(workdir / "virtlogd.pid")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _wait(VIRTLOGD_SOCK.exists, self.logd, "virtlogd did not listen", workdir / "virtlogd.stderr")
        self.run_dir = workdir / "run"
        self.run_dir.mkdir(mode=0o700)
        self.conf, self.pidfile = workdir / "libvirtd.conf", workdir / "libvirtd.pid"
        self.log = workdir / "libvirtd.log"
        self.conf.write_text(f'unix_sock_dir = "{self.run_dir}"\nunix_sock_rw_perms = "0700"\n'
                             'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                             f'log_outputs = "3:file:{self.log}"\n')
        self.uri = f"qemu:///system?socket={self.run_dir}/libvirt-sock"
        with open(workdir / "libvirtd.stderr", "wb") as err:
            self.proc = subprocess.Popen([LIBVIRTD, "--config", str(self.conf), "--pid-file", str(self.pidfile)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait(lambda: self.virsh("version", check=False).returncode == 0, self.proc,
                  f"libvirtd did not answer on {self.uri}", self.log)
        except BaseException:
            stop(self.logd)
            raise

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([VIRSH, "-q", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def close(self) -> None:
        stop(self.proc)
        stop(self.logd)

    def __enter__(self) -> "Libvirtd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attr(value) -> str:
    """An XML attribute value in single quotes (the style of libvirt's own documentation)."""
    return "'" + escape(str(value), {"'": "&apos;"}) + "'"


def interface_xml(sock, mode: str, queues: int = 1) -> str:
    """`<interface type='vhostuser'>`: libvirt's QEMU is the socket's client (mode='client': the back-end
    listens; QEMU retries every second, so a restarted back-end is found again) or its server
    (mode='server': `vhostsplice run --connect`). docs/libvirt.md shows exactly these elements."""
    source = f"      <source type='unix' path={_attr(sock)} mode='{mode}'"
    source += ">\n        <reconnect enabled='yes' timeout='1'/>\n      </source>" if mode == "client" else "/>"
    driver = f"\n      <driver queues='{queues}'/>" if queues > 1 else ""
    return f"""    <interface type='vhostuser'>
      <alias name='{ALIAS}'/>
      <mac address='{MAC}'/>
{source}
      <model type='virtio'/>{driver}
    </interface>"""


def domain_xml(name: str, image: G.GuestImage, script: Path, serial: Path, interface: str,
               *, memory_mib: int = 512, emulator: str | None = None, extra_fw_cfg: dict | None = None) -> str:
    """A TCG domain booting the test image directly (kernel + initramfs), guest RAM from a shared memfd,
    the test script as fw_cfg opt/t/test, the serial console appended to SERIAL (one file across boots)."""
    cmdline = f"console=ttyS0 quiet panic=-1 vsip={G.GUEST_IP}/{G.PREFIX} vspeer={G.HOST_IP}"
    entries = {"opt/t/test": script, **{f"opt/t/{k}": v for k, v in (extra_fw_cfg or {}).items()}}
    fw_cfg = "\n".join(f"    <entry name='{k}' file={_attr(v)}/>" for k, v in entries.items())
    emulator = emulator or shutil.which(G.QEMU) or G.QEMU
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu current='1'>2</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <sysinfo type='fwcfg'>
{fw_cfg}
  </sysinfo>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
{interface}
    <serial type='file'><source path={_attr(serial)} append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='{ALIAS}'>
      <qemu:frontend><qemu:property name='vectors' type='unsigned' value='0'/></qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


class LibvirtGuest(G.Guest):
    """The test guest as a libvirt domain: support.guest.Guest's serial-console reading (markers, checks,
    iperf3 documents), with QEMU started, reset and destroyed by libvirt instead of by this process.

    `interface` is the domain's `<interface>` element (interface_xml). The serial file is appended to
    across boots: count boots with wait_marker("BOOT", after=N)."""

    def __init__(self, daemon: Libvirtd, image: G.GuestImage, workdir: Path, script: str, interface: str,
                 *, name: str, fw_cfg: dict | None = None):
        assert not image.device_opts, f"the domain XML carries no device_opts ({image.device_opts}): add them"
        super().__init__(image, "", workdir, script, name=name)
        self.daemon, self.domain = daemon, f"vsl-{os.getpid()}-{name}"
        self.xml_path = self.workdir / f"{name}.xml"
        self.xml_path.write_text(domain_xml(self.domain, image, self.script_path, self.serial_path, interface,
                                            extra_fw_cfg=fw_cfg))

    def start(self, netns=None) -> "LibvirtGuest":
        self.begin_start()
        return self.finish_start()

    def begin_start(self) -> None:
        """Define the domain and run `virsh start` in the background: a QEMU that listens on a vhost-user
        socket (mode='server') does not finish starting until the back-end has connected."""
        self.script_path.write_text(self.script)
        self.script_path.chmod(0o644)
        self.serial_path.write_bytes(b"")
        self.daemon.virsh("define", str(self.xml_path))
        self._starting = subprocess.Popen([VIRSH, "-q", "-c", self.daemon.uri, "start", self.domain],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        self.started_at = time.monotonic()

    def finish_start(self, timeout: float = 120) -> "LibvirtGuest":
        try:
            out, _ = self._starting.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._starting.kill()
            out, _ = self._starting.communicate()
        if self._starting.returncode != 0:
            raise AssertionError(f"virsh start {self.domain} exited {self._starting.returncode}:\n{out}")
        return self

    def new_boot(self) -> None:
        """Forget what earlier boots printed (before a reset or start): markers and checks are this boot's."""
        self.serial_path.write_bytes(b"")
        self.marker_times.clear()

    def running(self) -> bool:
        r = self.daemon.virsh("domstate", self.domain, check=False)
        return r.returncode == 0 and r.stdout.strip() == "running"

    def virsh(self, verb: str, *args: str) -> str:
        """A virsh command on this domain (reset, destroy, start, domifstat ...); its output."""
        return self.daemon.virsh(verb, self.domain, *args).stdout

    def qemu_pid(self) -> int | None:
        """The domain's QEMU, as libvirt recorded it in its QEMU driver's state directory."""
        try:
            return int(Path(f"/run/libvirt/qemu/{self.domain}.pid").read_text())
        except (OSError, ValueError):
            return None

    def ifstat(self) -> dict[str, int]:
        """`virsh domifstat DOM ua-net0` as {"rx_packets": ..., "tx_bytes": ...}."""
        out = self.virsh("domifstat", MAC)
        return {p[1]: int(p[2]) for p in (line.split() for line in out.splitlines()) if len(p) == 3}

    def kill(self) -> None:
        self.daemon.virsh("destroy", self.domain, check=False)

    def close(self) -> None:
        self.kill()
        self.daemon.virsh("undefine", self.domain, check=False)

    def __exit__(self, *exc) -> None:
        self.close()
