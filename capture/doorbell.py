"""Wake a sleeping consumer: an abstract-namespace Unix datagram socket.

Abstract names live in the kernel's socket table, not the filesystem, so nothing is left behind
when either side dies. The producer rings only when the consumer has announced that it sleeps,
so a busy pipeline never pays for the system call.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket


def new_address() -> bytes:
    return f"\0ringtape-{os.getpid()}-{secrets.token_hex(6)}".encode()


class DoorbellListener:
    """The consumer's end: ``wait(timeout)`` returns when rung or when the timeout passes."""

    def __init__(self, address: bytes) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.setblocking(False)

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return False
        self.drain()
        return True

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self._sock.recv(64)

    def close(self) -> None:
        self._sock.close()


class Doorbell:
    """The producer's end: ``ring()`` never blocks and never raises."""

    def __init__(self, address: bytes) -> None:
        self._address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def ring(self) -> None:
        # A full queue or a consumer that is gone both mean there is nothing more to do.
        with contextlib.suppress(OSError):
            self._sock.sendto(b"\1", self._address)

    def close(self) -> None:
        self._sock.close()
