"""systemd's notification protocol (sd_notify): readiness, status, stopping, watchdog.

A datagram on the unix socket named by $NOTIFY_SOCKET, as systemd documents it; a few lines
are all the protocol needs, so no library. Outside systemd every call does nothing.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):          # abstract namespace
            address = "\0" + address[1:]
        self._address = address if address[:1] in ("/", "\0") else ""
        try:
            usec = int(environ.get("WATCHDOG_USEC", "0"))
            pid = int(environ.get("WATCHDOG_PID", str(os.getpid())))
        except ValueError:
            usec, pid = 0, 0
        # Ping at half the timeout, as sd_watchdog_enabled() advises; only for our own pid.
        self.watchdog_interval = usec / 2e6 if usec > 0 and pid == os.getpid() else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")
