"""mutmut's runner, warm (docs/testing.md): each mutant's tests run in a process forked from one
that has already imported torch and pytest, so a mutant costs its tests, not a torch start.

    python tests/mutation_runner.py serve &           # once, in the mutated copy's root
    python tests/mutation_runner.py PYTEST-ARGS...    # per mutant (mutmut's runner): exit status
                                                      # of pytest; without a server, runs it here

The serving process never imports the repository's modules: each forked child imports them from
disk, mutated as mutmut left them. Bytecode is not written, so a mutant is never read from a stale
cache.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

SOCKET = Path(".mutation-runner.sock")
LIMIT_S = 300.0  # one mutant's tests, at most (they take about a second)


def _run_pytest(args: list[str]) -> int:
    """0 when the tests pass, else 1. mutmut counts only status 1 as a kill; a mutant that does
    not even import (a syntax error: pytest's status 2) is killed too. The campaign's first run,
    without mutants, must pass: a broken command shows there."""
    import pytest

    return 0 if pytest.main(args) == 0 else 1


def serve() -> None:
    import pytest  # noqa: F401 - imported once here, inherited by every child
    import torch
    import torch._dynamo  # noqa: F401 - what torch.optim pulls in on a first step: 3 s more

    del torch

    SOCKET.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(SOCKET))
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            args = json.loads(conn.makefile().readline())
            pid = os.fork()
            if pid == 0:
                server.close()
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # quiet, as mutmut swallows it
                os._exit(_run_pytest(args))
            code = _wait(pid, conn)
            if code is not None:
                conn.sendall(f"{code}\n".encode())


def _wait(pid: int, conn: socket.socket) -> int | None:
    """The child's exit status; None, with the child killed, once the client has gone (mutmut
    stops a mutant's run at its timeout: a mutant may loop forever) or after LIMIT_S."""
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable or time.monotonic() - start > LIMIT_S:  # readable: the client closed
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None


def run(args: list[str]) -> int:
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(SOCKET))
    except OSError:  # no server: run here
        return _run_pytest(args)
    with client:
        client.sendall((json.dumps(args) + "\n").encode())
        return int(client.makefile().readline())


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        sys.exit(run(sys.argv[1:]))
