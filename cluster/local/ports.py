"""Ports of the local replicas: each reserved from the moment it is picked until its replica exits.

Picking a port by binding port 0 and closing the socket (the usual ``free_port()``) hands the same
number out again as soon as the socket is closed: two replicas started in the same tick could get
the same port, and one replica's probe then reached the other's server (issue 19). Here:

- a queue-proxy's ports are sockets the supervisor binds and listens on itself, handed to the
  queue-proxy by file descriptor: the port is held by a socket from the first moment;
- a model server's ``$PORT`` cannot be held that way (the model server binds it itself), so it is
  reserved in the :class:`PortTable` and never handed to another replica while its replica lives;
- a port the kernel offers that the table holds is set aside (its socket kept open while the next
  one is asked for, so that the kernel moves on) and never returned.

:func:`listener_owners` tells whether the process that listens on a model server's port is that
model server, so that a replica whose model server could not bind its port (another process holds
it) is never marked ready.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable

_TCP_LISTEN = "0A"
_ATTEMPTS = 64


class PortTable:
    """The ports the live replicas hold, by owner (a replica's name)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._owner: dict[int, str] = {}

    def __contains__(self, port: object) -> bool:
        return port in self._owner

    def owner(self, port: int) -> str | None:
        return self._owner.get(port)

    def held(self, owner: str) -> list[int]:
        return sorted(p for p, o in self._owner.items() if o == owner)

    def listener(self, owner: str, *, backlog: int = 1024) -> socket.socket:
        """A listening socket on a port no live replica holds; the port is ``owner``'s now."""
        sock = self._bind(listen=backlog)
        self._owner[sock.getsockname()[1]] = owner
        return sock

    def port(self, owner: str) -> int:
        """A port for a process to bind itself (a model server's ``$PORT``), reserved for
        ``owner``: the socket that found it is closed, the reservation stays."""
        with self._bind(listen=None) as sock:
            port = int(sock.getsockname()[1])
        self._owner[port] = owner
        return port

    def release(self, owner: str) -> None:
        """``owner`` has exited: its ports may be handed out again."""
        for port in self.held(owner):
            del self._owner[port]

    def _bind(self, *, listen: int | None) -> socket.socket:
        set_aside: list[socket.socket] = []
        try:
            for _ in range(_ATTEMPTS):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((self.host, 0))
                except OSError:
                    sock.close()
                    raise
                if sock.getsockname()[1] in self._owner:
                    set_aside.append(sock)  # held open: the kernel offers another port next
                    continue
                if listen is not None:
                    try:
                        sock.listen(listen)
                    except OSError:
                        sock.close()
                        raise
                return sock
            raise OSError(f"no free port on {self.host} after {_ATTEMPTS} attempts")
        finally:
            for sock in set_aside:
                sock.close()


def listener_owners(port: int, session: int) -> tuple[bool, list[int]] | None:
    """Who listens on TCP ``port`` (any address): ``(True, [])`` when a process of session
    ``session`` (a spawned model server's pid: it leads its own session) holds one of the
    listening sockets, else ``(False, pids)`` with the processes that hold them.

    None when nothing listens there, or when this cannot be known (not Linux, no ``/proc``).
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    pids = list(_pids())
    # The model server's own session first: the usual answer, without reading every fd table.
    if any(_session_of(pid) == session and _holds_any(pid, inodes) for pid in pids):
        return True, []
    others = [pid for pid in pids if _holds_any(pid, inodes)]
    if not others:
        return None  # listening, but no holder visible to us (another user's, another netns)
    return False, others


def _listening_inodes(port: int) -> set[str]:
    want = f"{port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if (
                        len(fields) > 9
                        and fields[3] == _TCP_LISTEN
                        and fields[1].rpartition(":")[2] == want
                    ):
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def _pids() -> Iterable[int]:
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                yield int(name)


def _holds_any(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
    return False


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
    fields = stat.rpartition(")")[2].split()
    return int(fields[3]) if len(fields) > 3 else None
