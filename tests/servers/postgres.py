"""A private PostgreSQL server for tests that stop and start it (the shared one at 127.0.0.1:5432 must
keep running for every other test).

`PrivatePostgres.create()` runs Debian's `initdb` into a fresh directory and starts `postgres` on a free
loopback port with trust authentication; `stop()` and `start()` take it down and bring it back on the
same port and data, as an outage would. PostgreSQL refuses to run as root, so under root the server
runs as the `postgres` user (the Debian package creates it) in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class Unavailable(Exception):
    """No PostgreSQL server binaries on this machine (Debian's postgresql package provides them)."""


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise Unavailable("no initdb found in /usr/lib/postgresql/*/bin or on PATH: install Debian's postgresql")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """One throwaway cluster: `url` for SQLAlchemy, `stop()`/`start()` for an outage, `destroy()` at the end."""

    def __init__(self, root: Path, port: int, bindir: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self._bindir = bindir
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> PrivatePostgres:
        bindir = _bindir()
        root = Path(tempfile.mkdtemp(prefix="kartabl-pg-"))
        server = cls(root, _free_port(), bindir)
        if server._user:
            shutil.chown(root, server._user)
        server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                    "--no-sync", "--locale=C.UTF-8")
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {server.port}\n"
                       f"unix_socket_directories = '{root}'\nfsync = off\nmax_connections = 60\n")
        server.start()
        return server

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bindir / program), *args]
        if self._user:
            command = ["runuser", "-u", self._user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)
        if done.returncode:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # pg_ctl -w waits for the socket; be sure TCP answers too
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the private PostgreSQL on port {self.port} did not start")

    def stop(self) -> None:
        """Take the server down the way a crash or a failover does: every session cut at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "server.log").read_text(errors="replace")
        return ""
