"""Every operator-facing failure is one line naming what and where, with its own exit code.

Each case runs the real command as a subprocess (the console scripts of this checkout)
against real brokers, files and datasets: an unreachable broker (within
``--connect-timeout``, and interruptible by SIGINT and SIGTERM while connecting), a refused
login, a failed TLS handshake, a data directory without the dataset's files, a model that
does not take the dataset's images, a node process that died, a run directory from another
federation and a port in use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from brokers import make_test_pki, start_mosquitto

from coordinator.provision.credentials import mosquitto_password_hash
from mpfl.errors import ExitCode

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 180.0  # generous: torch imports slowly on a loaded 2-core machine


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run(command: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = RUN_TIMEOUT_S) -> Done:
    done = subprocess.run([str(BIN / command), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)
    return Done(done.returncode, done.stdout, done.stderr)


def one_error_line(done: Done, prog: str, *needles: str) -> str:
    """The single stderr line, checked to start with the command's own name."""
    assert len(done.error_lines) == 1, done.err
    line = done.error_lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def edge(broker: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["start", "--broker", broker, "--federation", "errs", "--node-id", "pi-01",
            "--state-dir", str(tmp_path / "state"), "--limit", "64", *extra]


# ----------------------------------------------------------------------- the broker


def test_an_unreachable_broker_is_one_line_after_the_connect_timeout(tmp_path: Path) -> None:
    done = run("mpfl-edge", *edge("mqtt://127.0.0.1:1", tmp_path, "--connect-timeout", "2"))
    assert done.code == ExitCode.BROKER_UNREACHABLE
    one_error_line(done, "mpfl-edge", "cannot reach the MQTT broker within 2 s",
                   "Connection refused", "mqtt://127.0.0.1:1", "--connect-timeout")
    assert "giving up after 2 s" in done.out  # said before the wait, not after it
    done = run("mpfl-coordinator", "run", "--broker", "mqtt://127.0.0.1:1",
               "--connect-timeout", "1", "--run-dir", str(tmp_path / "run"))
    assert done.code == ExitCode.BROKER_UNREACHABLE
    one_error_line(done, "mpfl-coordinator", "cannot reach the MQTT broker within 1 s")


def _start_and_wait_for(args: Sequence[str], needle: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if needle in line:
            return proc, seen
    proc.wait()
    pytest.fail(f"{args[0]} ended before saying {needle!r}: {seen}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
@pytest.mark.parametrize("command", ["mpfl-edge", "mpfl-coordinator"])
def test_a_signal_ends_the_wait_for_a_broker_at_once(
    tmp_path: Path, command: str, sig: signal.Signals, code: int
) -> None:
    if command == "mpfl-edge":
        args = ["mpfl-edge", *edge("mqtt://127.0.0.1:1", tmp_path, "--connect-timeout", "0")]
    else:
        args = ["mpfl-coordinator", "run", "--broker", "mqtt://127.0.0.1:1",
                "--connect-timeout", "0", "--run-dir", str(tmp_path / "run")]
    proc, _ = _start_and_wait_for(args, "cannot reach mqtt://127.0.0.1:1 yet")
    time.sleep(0.5)  # well inside the retry loop's back-off
    proc.send_signal(sig)
    assert proc.stdout is not None
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == code
    assert f"stopped ({sig.name}) while connecting to mqtt://127.0.0.1:1" in rest
    assert "Traceback" not in rest


def _password_broker(tmp_path: Path, user: str, password: str) -> str:
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{user}:{mosquitto_password_hash(password)}\n")
    passwd.chmod(0o600)
    return f"allow_anonymous false\npassword_file {passwd}\n"


def test_a_refused_login_is_one_line_and_not_retried(tmp_path: Path) -> None:
    conf = _password_broker(tmp_path, "pi-01", "right-password")
    with start_mosquitto(tmp_path, conf) as broker:
        url = f"mqtt://{broker.host}:{broker.port}"
        start = time.monotonic()
        done = run("mpfl-edge", *edge(url, tmp_path),
                   env={"MPFL_USERNAME": "pi-01", "MPFL_PASSWORD": "wrong-password"})
        assert done.code == ExitCode.BROKER_REFUSED
        one_error_line(done, "mpfl-edge", "the broker refused the login", url, "MPFL_PASSWORD")
        assert time.monotonic() - start < 120  # not the 30 s connect timeout on a retry loop
        ok = run("mpfl-edge", *edge(url, tmp_path, "--connect-timeout", "5"),
                 env={"MPFL_USERNAME": "nobody", "MPFL_PASSWORD": "x"})
        assert ok.code == ExitCode.BROKER_REFUSED


def test_a_failed_tls_handshake_is_one_line(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki", hosts=("localhost",))  # a DNS name only, no IP
    with start_mosquitto(tmp_path, tls=pki) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        done = run("mpfl-edge", *edge(url, tmp_path, "--ca-file", str(pki.cafile)))
        assert done.code == ExitCode.TLS
        one_error_line(done, "mpfl-edge", "TLS handshake", "127.0.0.1", "--ca-file",
                       "subjectAltName")
        other = make_test_pki(tmp_path / "other", hosts=("127.0.0.1",))
        done = run("mpfl-edge", *edge(url, tmp_path, "--ca-file", str(other.cafile)))
        assert done.code == ExitCode.TLS
        one_error_line(done, "mpfl-edge", "self-signed certificate in certificate chain")


def test_a_good_tls_connect_leaves_no_openssl_error_in_the_broker_log(tmp_path: Path) -> None:
    """No bare TCP probe: Mosquitto logged "unexpected eof" for each one on a TLS port."""
    pki = make_test_pki(tmp_path / "pki", hosts=("127.0.0.1",))
    with start_mosquitto(tmp_path, tls=pki) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        # The harness's own start-up probe is a bare TCP connect: let its line come first.
        settle = time.monotonic() + 10
        while "unexpected eof" not in broker.log() and time.monotonic() < settle:
            time.sleep(0.1)
        before = len(broker.log())
        args = ["mpfl-edge", *edge(url, tmp_path, "--ca-file", str(pki.cafile))]
        proc, _ = _start_and_wait_for(args, f"connected to {url}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log = broker.log()[before:]
        assert "New client connected" in log
        assert "OpenSSL Error" not in log and "unexpected eof" not in log, log


# ------------------------------------------------------------------ data and model


def test_a_data_dir_without_the_dataset_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run("mpfl-edge", *edge("mqtt://127.0.0.1:1", tmp_path, "--dataset", "mnist",
                                 "--data-dir", str(empty)))
    assert done.code == ExitCode.DATA
    one_error_line(done, "mpfl-edge", "missing file train-images-idx3-ubyte.gz",
                   "point --data-dir at", str(empty))


def test_a_model_that_does_not_fit_the_data_stops_before_round_1(
    tmp_path: Path, cifar_dir: Path
) -> None:
    start = time.monotonic()
    done = run("mpfl", "simulate", "--nodes", "2", "--dataset", "cifar10",
               "--data-dir", str(cifar_dir), "--limit", "50",
               "--run-dir", str(tmp_path / "sim"))
    assert done.code == ExitCode.MODEL
    one_error_line(done, "mpfl", "does not take 3x32x32 images", "model=lenet5",
                   "dataset=cifar10", "`mpfl models`")
    assert not (tmp_path / "sim" / "logs").exists()  # no process was started
    assert time.monotonic() - start < RUN_TIMEOUT_S
    # the coordinator checks its evaluation data the same way, before any broker
    done = run("mpfl-coordinator", "run", "--eval-data", "cifar10", "--data-dir",
               str(cifar_dir), "--run-dir", str(tmp_path / "run"))
    assert done.code == ExitCode.MODEL
    one_error_line(done, "mpfl-coordinator", "does not take 3x32x32 images")


# ------------------------------------------------------------------ runs and nodes


def test_a_run_directory_of_another_federation_is_refused(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "run")
    first = run("mpfl-coordinator", "run", "--federation", "orchard", "--run-dir", run_dir,
                "--broker", "mqtt://127.0.0.1:1", "--connect-timeout", "0.5")
    assert first.code == ExitCode.BROKER_UNREACHABLE  # but the run directory is claimed
    done = run("mpfl-coordinator", "run", "--federation", "vineyard", "--run-dir", run_dir,
               "--broker", "mqtt://127.0.0.1:1", "--connect-timeout", "0.5")
    assert done.code == ExitCode.FOREIGN_RUN_DIR
    one_error_line(done, "mpfl-coordinator", "belongs to federation 'orchard'",
                   "not 'vineyard'", run_dir)


def _node_pid(marker: str, node_id: str, timeout: float = RUN_TIMEOUT_S) -> int:
    """The pid of the simulation's edge process for ``node_id`` (its command line holds the
    run's unique directory), once it has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in argv]
            if "edge_node.cli" in words and node_id in words and any(marker in w for w in words):
                return int(entry.name)
        time.sleep(0.2)
    pytest.fail(f"{node_id} never started")


def test_a_node_that_dies_is_named_with_its_log_at_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "sim"
    # Deadlines far longer than the test may take: the launcher must not wait them out.
    proc = subprocess.Popen([str(BIN / "mpfl"), "simulate", "--nodes", "2", "--limit", "60",
                             "--run-dir", str(run_dir), "--round-timeout", "600",
                             "--mask-rounds", "2", "--train-rounds", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = _node_pid(str(run_dir), "node-1")
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        killed = time.monotonic()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed < 60  # not three 600 s deadlines
    assert proc.returncode == ExitCode.NODE_DIED
    one_error_line(Done(proc.returncode, out, err), "mpfl", "node-1 was killed by SIGKILL",
                   str(run_dir / "logs" / "node-1.log"))


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("mpfl-coordinator", "run", "--embedded-port", str(port),
                   "--run-dir", str(tmp_path / "run"))
    assert done.code == ExitCode.PORT_IN_USE
    one_error_line(done, "mpfl-coordinator", f"port {port} on 127.0.0.1 is already in use",
                   "--embedded-port")
