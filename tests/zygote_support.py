"""Entry points for the zygote's tests (``tests.zygote_support:<name>``), and /proc readers."""

from __future__ import annotations

import json
import os
import signal


def report_and_wait(argv: list[str]) -> int:
    """Write this process's identity and environment to ``$ZYGOTE_TEST_OUT``, say ready on
    ``$READY_FD`` (if given), then wait for a signal (SIGTERM's default action ends it)."""
    info = {
        "argv": argv,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "value": os.environ.get("ZYGOTE_TEST_VALUE"),
        "stdin_is_devnull": os.path.samestat(os.fstat(0), os.stat(os.devnull)),
    }
    path = os.environ["ZYGOTE_TEST_OUT"]
    with open(path + ".tmp", "w") as fh:
        json.dump(info, fh)
    os.replace(path + ".tmp", path)  # readers never see half a file
    fd = os.environ.get("READY_FD")
    if fd:
        os.write(int(fd), (json.dumps({"event": "ready", "pid": os.getpid()}) + "\n").encode())
        os.close(int(fd))
    while True:
        signal.pause()


def exit_with(argv: list[str]) -> int:
    """Return ``$EXIT_CODE`` at once."""
    return int(os.environ.get("EXIT_CODE", "0"))


def proc_stat(pid: int) -> dict[str, int | str]:
    """State, ppid, process group and session of ``pid`` from /proc (raises if it is gone)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return {
        "state": fields[0],
        "ppid": int(fields[1]),
        "pgid": int(fields[2]),
        "sid": int(fields[3]),
    }


def comm(pid: int) -> str:
    """The process's name (``ps -o comm``)."""
    with open(f"/proc/{pid}/comm") as fh:
        return fh.read().strip()


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return proc_stat(pid)["state"] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = proc_stat(int(entry))
            except OSError:
                continue
            if st["ppid"] == pid and st["state"] != "Z":
                out.append(int(entry))
    return out
