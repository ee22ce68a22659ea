"""The kit's README.txt, followed step by step on one machine, runs a federation over TLS.

``mpfl-coordinator provision`` renders a kit; this test then runs the README's own command
lines: the openssl recipe, the gateway's ``install`` lines, ``mpfl data split`` and each
node's ``install`` lines, and starts a real Mosquitto on the installed mosquitto.conf and
the services with the ``ExecStart`` lines of the installed systemd units and their env
files. What one machine cannot do is left out and said here: ``apt-get``, ``systemctl``,
``useradd``, ``scp``/``ssh`` (files are copied instead) and ``sudo``; the machines' ``/etc``
and ``/var/lib`` are directories under a temporary root, one per machine; the owner ``mpfl``
(a user this machine lacks) is dropped from ``install -o``. Run as root, Mosquitto drops to
its own user as on a gateway, so it must be able to read passwd and the key through the
README's group ``mosquitto`` and modes. pi-01 dials the broker by name (the certificate's
DNS name), pi-02 by address (its IP name).
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import free_port, require_mosquitto

from coordinator.provision import provision

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
NODES = ("pi-01", "pi-02")
RUN_TIMEOUT_S = 600.0
SKIPPED = ("apt-get ", "systemctl ", "useradd ", "ssh ", "journalctl ")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


AS_GATEWAY = os.geteuid() == 0 and _group_exists("mosquitto")


def steps(readme: str) -> dict[int, list[str]]:
    """The command lines of each numbered step (indented 5 spaces; ``\\`` continues)."""
    found: dict[int, list[str]] = {}
    current: int | None = None
    pending = ""
    for line in readme.splitlines():
        heading = re.match(r"^(\d+)\. ", line)
        if heading:
            current = int(heading.group(1))
            found[current] = []
            continue
        if current is None:
            continue
        if pending:
            text = pending + line.strip()
        elif re.match(r"^     \S", line):
            text = line.strip()
        else:
            continue
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        found[current].append(text)
    return found


def on_machine(command: str, machine: Path) -> str:
    """A README line as run on ``machine``: /etc and /var/lib under its root, no sudo, no
    owner this machine lacks."""
    command = command.replace("sudo ", "")
    command = re.sub(r"(?<![\w.~-])/(etc|var/lib)/", rf"{machine}/\1/", command)
    command = command.replace("-o mpfl ", "")
    if not AS_GATEWAY:
        command = command.replace("-o root -g mosquitto ", "")
    return command


def run_lines(lines: list[str], cwd: Path, machine: Path, **replace: str) -> None:
    """One step's lines as one bash script (``cd`` carries over, as in a terminal)."""
    script = []
    for line in lines:
        if line.startswith(SKIPPED) or line.startswith(("scp ", "sudo systemctl", "sudo apt",
                                                         "sudo useradd")):
            continue
        command = on_machine(line, machine)
        for old, new in replace.items():
            command = command.replace(old, new)
        script.append(command)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-ec", "\n".join(script)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, "\n".join(script) + f"\n{done.stdout}\n{done.stderr}"


def read_env(path: Path, machine: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = on_machine(value, machine)
    return env


def exec_start(unit: Path, env: dict[str, str], machine: Path) -> list[str]:
    """The unit's ExecStart as systemd would run it: ${VAR} is one word, $VAR splits."""
    text = unit.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    command = on_machine(line.split("=", 1)[1], machine).replace("/opt/mpfl/venv/bin/", "")
    words: list[str] = []
    for word in command.split():
        braced = re.fullmatch(r"\$\{(\w+)\}", word)
        bare = re.fullmatch(r"\$(\w+)", word)
        if braced:
            words.append(env[braced.group(1)])
        elif bare:
            words += shlex.split(env.get(bare.group(1), ""))
        else:
            words.append(word)
    return [str(BIN / words[0]), *words[1:]]


@pytest.fixture
def world() -> Iterator[Path]:
    """A root for the machines that Mosquitto's own user may traverse (pytest's tmp is
    private to root)."""
    root = Path(tempfile.mkdtemp(prefix="mpfl-kit-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_kits_readme_runs_a_federation_over_tls(world: Path, mnist_dir: Path) -> None:
    binary = require_mosquitto()
    port = free_port()
    kit = world / "kit"
    provision(list(NODES), kit, federation="orchard", broker_host="localhost",
              broker_ips=["127.0.0.1"], port=port)
    readme = (kit / "README.txt").read_text()
    plan = steps(readme)
    gateway = world / "gateway"
    for machine in (gateway, *(world / node for node in NODES)):
        (machine / "etc/systemd/system").mkdir(parents=True)  # there on any systemd host

    run_lines(plan[1], kit, gateway)  # certificates: the README's openssl recipe, as is
    # On one machine the gateway's Mosquitto must not take over the system's: the step's
    # lines run with this gateway's /etc and /var/lib under the temporary root.
    persistence = gateway / "var/lib/mosquitto"
    persistence.mkdir(parents=True)
    if AS_GATEWAY:
        shutil.chown(persistence, "mosquitto", "mosquitto")
    run_lines(plan[2], kit, gateway)
    conf = gateway / "etc/mosquitto/mosquitto.conf"
    assert oct((gateway / "etc/mosquitto/mpfl/passwd").stat().st_mode & 0o777) == "0o640"
    conf.write_text(on_machine(conf.read_text(), gateway))
    run_lines(plan[3], kit, gateway, **{"~/datasets": str(mnist_dir), "--out data":
                                        "--out data --limit 300"})

    broker_log = world / "mosquitto.log"
    services: list[subprocess.Popen[str]] = []
    with broker_log.open("w") as log:
        broker = subprocess.Popen([binary, "-c", str(conf)], stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "running" not in broker_log.read_text() and time.monotonic() < deadline:
            assert broker.poll() is None, broker_log.read_text()
            time.sleep(0.1)
        env = read_env(gateway / "etc/mpfl/coordinator.env", gateway)
        # The README's way to override federation.toml: MPFL_<KEY> lines in the env file.
        env |= {"MPFL_MASK_ROUNDS": "1", "MPFL_TRAIN_ROUNDS": "1"}
        assert env["MPFL_METRICS_PORT"] == "9108"  # step 5's port; a free one here
        metrics_port = env["MPFL_METRICS_PORT"] = str(free_port())
        coordinator = subprocess.Popen(
            exec_start(gateway / "etc/systemd/system/mpfl-coordinator.service", env, gateway),
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        services.append(coordinator)
        for node in NODES:
            machine = world / node
            home = machine / "home"
            home.mkdir(parents=True)
            for name in (f"nodes/{node}.env", f"nodes/{node}.key", "coordinator.pub",
                         "certs/ca.crt", f"data/{node}/train.npz",
                         "systemd/mpfl-edge.service"):  # what the README's scp copies
                shutil.copy(kit / name, home)
            run_lines(plan[4], home, machine, **{NODES[0]: node})
            env = read_env(machine / "etc/mpfl/node.env", machine)
            if node == "pi-02":
                env["MPFL_BROKER"] = f"mqtts://127.0.0.1:{port}"
            services.append(subprocess.Popen(
                exec_start(machine / "etc/systemd/system/mpfl-edge.service", env, machine),
                env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        out, _ = coordinator.communicate(timeout=RUN_TIMEOUT_S)
        assert coordinator.returncode == 0, out + broker_log.read_text()
        assert "done: 2 rounds" in out
        assert f"metrics on http://127.0.0.1:{metrics_port}" in out
        assert (gateway / "var/lib/mpfl/coordinator/final").is_dir()
        for proc in services[1:]:
            node_out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, node_out
            assert "WARNING: no keys" not in node_out  # the kit's keys are in use
        log = broker_log.read_text()
        assert "OpenSSL Error" not in log, log
        assert re.search(r"New client connected .* as pi-01", log)
        assert re.search(r"New client connected .* as pi-02", log)
    finally:
        for proc in [*services, broker]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
