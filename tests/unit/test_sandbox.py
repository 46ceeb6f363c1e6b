"""The sandbox's one table (vhostsplice/sandbox/allowlist.py) and its consumers: the seccomp rules,
`run --print-sandbox` and docs/security.md must all say the same."""
from __future__ import annotations

import json
import os
import re
import subprocess

from vhostsplice.sandbox import allowlist, describe, seccomp
from vhostsplice.sandbox.allowlist import Facts
from vhostsplice.serve.selfexec import self_argv, self_env

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "security.md")


def test_every_row_has_a_known_syscall_a_rule_and_a_reason():
    names = [name for name, _, _ in allowlist.ALLOW]
    assert len(names) == len(set(names))
    for name, rule, why in allowlist.ALLOW:
        assert rule in allowlist.ARG_RULES and why.strip(), name
    known = [n for n in names if seccomp.resolve(n) == seccomp.NR_UNKNOWN]
    assert seccomp.version() is None or known == [], known


def test_openat_is_allowed_in_the_stats_directory_only():
    by_name = {}
    for rule in allowlist.rules(Facts(stats_dir_fd=7, socket_dir_fd=9)):
        by_name.setdefault(rule.syscall, []).append(rule)
    allow, deny = sorted(by_name["openat"], key=lambda r: r.action != seccomp.ACT_ALLOW)
    assert allow.action == seccomp.ACT_ALLOW and allow.args == (seccomp.Cmp(0, seccomp.CMP_EQ, 7),)
    assert deny.action == seccomp.act_errno(1) and deny.args == (seccomp.Cmp(0, seccomp.CMP_NE, 7),)
    assert [r.args for r in by_name["unlinkat"]] == [(seccomp.Cmp(0, seccomp.CMP_EQ, 9),)]
    unconfined_dirs = {r.syscall: r for r in allowlist.rules(Facts())}
    assert "unlinkat" not in unconfined_dirs and "renameat" not in unconfined_dirs
    assert unconfined_dirs["openat"].action == seccomp.act_errno(1) and unconfined_dirs["openat"].args == ()


def test_print_sandbox_lists_the_table():
    out = subprocess.run([*self_argv(), "run", "--print-sandbox"], capture_output=True, text=True, check=True,
                         env=self_env())
    doc = json.loads(out.stdout)
    assert [(r["syscall"], r["args"], r["why"]) for r in doc["allow"]] == list(allowlist.ALLOW)
    assert doc["kernel"]["landlock_abi"] == describe()["kernel"]["landlock_abi"]


def test_docs_security_lists_exactly_the_allowed_syscalls():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## The allow-list", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert documented == [name for name, _, _ in allowlist.ALLOW]
