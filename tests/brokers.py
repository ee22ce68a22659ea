"""Start a real Mosquitto for integration tests: free port, config, process, clean stop.

    with start_mosquitto(tmp_path) as broker:            # plain MQTT, anonymous allowed
        client.connect(broker.host, broker.port)

    pki = make_test_pki(tmp_path / "pki")               # self-signed CA + server cert
    with start_mosquitto(tmp_path, tls=pki) as broker:  # MQTT over TLS
        ...

    with run_mosquitto(tmp_path, lambda port: my_config(port)) as broker:  # full control
        ...

Every test gets its own broker process on 127.0.0.1, killed on exit. When the binary is
missing the test is skipped locally and fails under CI (env ``CI`` set): install it with
``make mosquitto``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_START_ATTEMPTS = 3


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class TlsFiles:
    cafile: Path
    certfile: Path
    keyfile: Path


def mosquitto_binary() -> str | None:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin), or None."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("mosquitto", path=search)


def require_mosquitto() -> str:
    """The binary's path; skip the test when it is missing, but fail under CI."""
    binary = mosquitto_binary()
    if binary is None:
        message = "mosquitto is not installed (run `make mosquitto` or apt-get install mosquitto)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the broker start retries if it is taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_test_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A throw-away CA and a server certificate for ``hosts``, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cnf = directory / "ca.cnf"
    ca_cnf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = mpfl test CA\n"
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\n"
        "keyUsage = critical, keyCertSign, cRLSign\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n"
    )
    san = ",".join(
        f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts
    )
    server_ext = directory / "server.ext"
    server_ext.write_text(
        f"subjectAltName = {san}\nbasicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\n"
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-config", str(ca_cnf), "-extensions", "v3_ca",
         "-keyout", str(directory / "ca.key"), "-out", str(files.cafile), "-days", "2"],
        [openssl, "req", *ec, "-subj", f"/CN={hosts[0]}",
         "-keyout", str(files.keyfile), "-out", str(directory / "server.csr")],
        [openssl, "x509", "-req", "-in", str(directory / "server.csr"),
         "-CA", str(files.cafile), "-CAkey", str(directory / "ca.key"), "-CAcreateserial",
         "-out", str(files.certfile), "-days", "2", "-extfile", str(server_ext)],
    ]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            pytest.fail(f"openssl failed: {' '.join(command[:3])}: {done.stderr.strip()}")
    return files


def tls_conf(tls: TlsFiles) -> str:
    """Listener options for a TLS listener (put them after its ``listener`` line)."""
    return f"cafile {tls.cafile}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"


def _with_privileges(config: str) -> str:
    # Started as root, mosquitto drops to the `mosquitto` user, which cannot read files in
    # pytest's private tmp directories; keep the test broker as the invoking user.
    if os.geteuid() == 0 and not any(line.startswith("user ") for line in config.splitlines()):
        return config.rstrip("\n") + "\nuser root\n"
    return config


def _wait_until_listening(
    proc: subprocess.Popen[bytes], host: str, port: int, deadline: float
) -> bool:
    """True once the port accepts connections; False if the process exited first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def run_mosquitto(
    tmp_path: Path,
    make_config: Callable[[int], str],
    *,
    host: str = "127.0.0.1",
    timeout: float = START_TIMEOUT_S,
) -> Iterator[Broker]:
    """Run ``mosquitto -c`` on a config built for a free port; stop it on exit.

    ``make_config(port)`` returns the whole config text; its listener must use that port
    on ``host``. A port taken between choosing and binding is retried with another one.
    """
    binary = require_mosquitto()
    workdir = Path(tempfile.mkdtemp(prefix="mosquitto-", dir=tmp_path))
    conf_path = workdir / "mosquitto.conf"
    log_path = workdir / "mosquitto.log"
    for _attempt in range(_START_ATTEMPTS):
        port = free_port(host)
        conf_path.write_text(_with_privileges(make_config(port)))
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [binary, "-c", str(conf_path)], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            if _wait_until_listening(proc, host, port, time.monotonic() + timeout):
                yield Broker(host, port, log_path)
                return
        finally:
            _stop(proc)
        text = log_path.read_text(errors="replace")
        if "Address already in use" not in text:
            break
    raise RuntimeError(f"mosquitto did not start within {timeout:.0f} s; log:\n{text}")


@contextmanager
def start_mosquitto(
    tmp_path: Path,
    extra_conf: str = "",
    tls: TlsFiles | None = None,
    *,
    host: str = "127.0.0.1",
) -> Iterator[Broker]:
    """A throw-away broker on ``host``: anonymous access unless ``extra_conf`` says otherwise.

    ``extra_conf`` is appended as global options (e.g. ``password_file ...``, ``acl_file``,
    ``max_packet_size``); ``tls`` turns the listener into MQTT over TLS.
    """

    def make_config(port: int) -> str:
        lines = ["per_listener_settings false", f"listener {port} {host}"]
        if tls is not None:
            lines.append(tls_conf(tls).rstrip("\n"))
        if "allow_anonymous" not in extra_conf:
            lines.append("allow_anonymous true")
        lines += ["persistence false", "log_dest stderr", "log_type all", extra_conf]
        return "\n".join(lines) + "\n"

    with run_mosquitto(tmp_path, make_config, host=host) as broker:
        yield broker
