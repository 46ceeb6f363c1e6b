"""docs/libvirt.md shows the very XML the libvirt interop test runs (tests/support/libvirt.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import libvirt as L

DOC = Path(__file__).resolve().parents[2] / "docs" / "libvirt.md"


def xml_blocks() -> list[str]:
    return re.findall(r"```xml\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.parametrize("sock,mode,queues", [
    ("/run/vhostsplice/vm1-net0.sock", "client", 1),
    ("/run/vm1/qemu/net0.sock", "server", 1),
    ("/run/vhostsplice/vm1-net.sock", "client", 2),
])
def test_every_interface_shape_the_test_runs_is_in_the_doc(sock, mode, queues):
    assert L.interface_xml(sock, mode, queues) + "\n" in xml_blocks()


def test_the_doc_shows_the_memory_backing_and_the_vectors_override_the_domain_uses():
    domain = L.domain_xml("d", _Image(), Path("/t"), Path("/s"), L.interface_xml("/x", "client"))
    squeeze = lambda text: re.sub(r"\s+", "", text)  # noqa: E731
    for block in xml_blocks():
        if "<interface" not in block:
            assert squeeze(block) in squeeze(domain), block


class _Image:
    kernel, initrd = Path("/boot/vmlinuz"), Path("/boot/initrd")


def env_blocks(text: str) -> list[str]:
    return [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if b.startswith("VHOSTSPLICE_SOCKET=")]


def test_the_systemd_environment_file_is_the_same_in_the_readme_and_docs_libvirt():
    readme = (DOC.parents[1] / "README.md").read_text()
    assert env_blocks(readme) and env_blocks(readme) == env_blocks(DOC.read_text())
