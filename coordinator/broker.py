"""The embedded broker: one command runs a whole federation on 127.0.0.1.

A ``mosquitto`` binary on PATH (or in /usr/sbin, where Debian puts it) is preferred: it
speaks MQTT v5 and 3.1.1 and is what the integration tests use. Without it, amqtt
(pure Python, MQTT 3.1.1 only) runs in-process on an event loop in a background thread;
the clients fall back to 3.1.1 by themselves. Either way the broker listens on loopback
only, allows anonymous clients and keeps nothing on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mpfl.errors import FederationError, PortInUse

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 10.0


class EmbeddedBroker(Protocol):
    kind: str
    host: str
    port: int

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("mosquitto", path=search)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the coordinator dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def mosquitto_config(port: int, host: str = HOST, extra: str = "") -> str:
    """``extra``: further config text (a regional gateway's bridge, a load test's limits)."""
    # No max_packet_size line: mosquitto then accepts up to the protocol limit (256 MB).
    lines = [f"listener {port} {host}", "allow_anonymous true", "persistence false",
             "log_dest stderr", "log_type error", "log_type warning"]
    if os.geteuid() == 0:
        lines.append("user root")  # stay the invoking user: the config lives in a private tmp
    return "\n".join(lines) + "\n" + extra


@dataclass
class MosquittoBroker:
    """A ``mosquitto -c`` child process on a free loopback port."""

    binary: str
    host: str = HOST
    port: int = 0
    kind: str = "mosquitto"
    extra: str = ""  # appended to the config: a regional gateway's bridge, a load test's limits
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mpfl-broker-")))
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> MosquittoBroker:
        fixed = self.port != 0  # asked for: never swapped for another
        for _attempt in range(1 if fixed else 3):
            self.port = self.port or free_port(self.host)
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(mosquitto_config(self.port, self.host, self.extra))
            log = (self.workdir / "mosquitto.log").open("wb")
            self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log,
                                          stderr=subprocess.STDOUT,
                                          preexec_fn=_die_with_parent)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _listening(self.host, self.port):
                    return self
                time.sleep(0.05)
            self.stop()
            if not fixed:
                self.port = 0  # perhaps taken meanwhile: try another
        text = (self.workdir / "mosquitto.log").read_text(errors="replace")[-500:]
        raise FederationError(f"the embedded mosquitto did not start: {text.strip()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class AmqttBroker:
    """amqtt on its own event loop in a daemon thread of this process."""

    kind = "amqtt"

    def __init__(self, host: str = HOST, port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._thread = threading.Thread(target=self._run, name="amqtt", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        # amqtt lets a refused client's socket errors reach the loop: keep them off stderr.
        self._loop.set_exception_handler(lambda _loop, _context: None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # amqtt's own deprecation notices
                from amqtt.broker import Broker

                config = {
                    "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                    "sys_interval": 0,
                    "auth": {"allow-anonymous": True},
                    "topic-check": {"enabled": False},
                }
                self._broker = Broker(config, loop=self._loop)
                self._loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # reported by start() in the calling thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> AmqttBroker:
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.CRITICAL)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            raise FederationError(f"the embedded amqtt broker did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._broker is None or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        with contextlib.suppress(Exception):  # best effort at exit
            future.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def check_port_free(host: str, port: int, flag: str) -> None:
    """PortInUse, naming the flag to change, if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a listening server sets it: only a live listener (not TIME_WAIT) is a clash.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                                f"{flag}", port=port) from None
            raise PortInUse(f"port {port} on {host} is already in use (another broker or "
                            f"coordinator?); stop that process or pick another {flag}",
                            port=port) from None


def start_embedded_broker(prefer: str = "auto", port: int = 0) -> EmbeddedBroker:
    """Mosquitto when installed (or ``prefer="mosquitto"``), else amqtt in-process; on
    ``port`` (0: any free one)."""
    binary = mosquitto_binary()
    if prefer == "mosquitto" and binary is None:
        raise FederationError("mosquitto is not installed (apt-get install mosquitto)")
    if port:
        check_port_free(HOST, port, "--embedded-port")
    if binary is not None and prefer in ("auto", "mosquitto"):
        return MosquittoBroker(binary, port=port).start()
    return AmqttBroker(port=port).start()
