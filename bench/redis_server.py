"""A real ``redis-server`` (Debian's package) on a free loopback port, for the tests and
the benchmarks: append-only file on (as in production, docs/deploy.md), its data in a
folder of its own, stopped and restarted on the same port and data."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have_redis() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """``redis-server`` in its own process. ``tls`` = (cert, key, ca) PEM paths: TLS only."""

    def __init__(self, folder: Path, *, password: str | None = None, aof: bool = True,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.aof = aof
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--dir", str(self.folder), "--daemonize", "no",
               "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
               "--logfile", str(self.log_path), "--loglevel", "notice", "--protected-mode", "no"]
        if self.tls:
            cert, key, ca = self.tls
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file",
                    str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode() if self.proc.stderr else ''} "
                                   f"{self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if self.tls or self._loaded():
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port} within {timeout} s")

    def _loaded(self) -> bool:
        """True once it answers PING (it refuses commands while it loads the append-only file)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            if self.password:
                s.sendall(f"AUTH {self.password}\r\n".encode())
                s.recv(100)
            s.sendall(b"PING\r\n")
            return s.recv(100).startswith(b"+PONG")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM: Redis writes its append-only file out and exits; SIGKILL: a crash."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
