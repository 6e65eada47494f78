"""Exec a command that dies with the process that started it (Linux ``PR_SET_PDEATHSIG``).

``python -m st_workflow.training._pdeathsig --parent PID -- CMD...`` sets the parent-death signal to SIGKILL, checks
that ``PID`` is still its parent (it may have died in between) and replaces itself with ``CMD``; the setting survives
``execve``. This replaces ``preexec_fn``, which is unsafe in a multi-threaded caller such as a Prefect worker.
Kept free of heavy imports: it runs before every training launch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return False
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "--parent" or args[2] != "--":
        sys.stderr.write("usage: python -m st_workflow.training._pdeathsig --parent PID -- CMD...\n")
        sys.exit(2)
    parent, cmd = int(args[1]), args[3:]
    set_pdeathsig()
    if os.getppid() != parent:
        sys.exit(1)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
