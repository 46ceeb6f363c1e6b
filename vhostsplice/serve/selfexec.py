"""How to start the very vhostsplice this process imported, as a child (worker, supervisor child).

`-P` keeps a source checkout in the working directory from shadowing the installed package and its
compiled core; PYTHONPATH points the child at the package this process runs.
"""
from __future__ import annotations

import os
import sys


def self_argv() -> list[str]:
    return [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "vhostsplice"]


def self_env() -> dict[str, str]:
    home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # holds vhostsplice/
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (home, os.environ.get("PYTHONPATH")))))
