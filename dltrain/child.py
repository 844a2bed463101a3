"""How dltrain starts a Python child process: never with the working directory on its path.

`python -m MODULE` puts the current folder first on the child's `sys.path`, so a folder holding
`dltrain/engine/writer_process.py` (or `hydra_plugins/x/`) would run its own code in the child.
`python_argv` starts the module through a two-line boot instead: the child's path starts with
the folder this dltrain was imported from (so the child runs the same dltrain as its parent),
then the interpreter's own entries; the working directory is not among them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# the folder holding the dltrain package (site-packages, or a source checkout)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
BOOT = (
    "import runpy, sys; sys.path[0] = {root!r}; module = sys.argv[1]; sys.argv = [module, *sys.argv[2:]]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def python_argv(module: str, *args: str) -> list[str]:
    """The arguments, after the interpreter, that run `module` as __main__ with `args`."""
    return ["-c", BOOT.format(root=PACKAGE_ROOT), module, *args]


def python_command(module: str, *args: str) -> list[str]:
    """The whole command: this interpreter, then `python_argv`."""
    return [sys.executable, *python_argv(module, *args)]
