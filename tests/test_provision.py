"""The provisioning kit without a broker: validation, file layout, modes, hashes, CLI."""

from __future__ import annotations

import base64
import fnmatch
import shutil
import stat
import subprocess
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.provision import (
    PBKDF2_ITERATIONS,
    mosquitto_password_hash,
    provision,
    provision_command,
    verify_mosquitto_password,
)
from coordinator.provision.templates import UNITS
from mpfl.errors import ConfigError
from mpfl.wire.topics import node_filter, nodes_filter, server_filter

# A line written by `mosquitto_passwd -b -c pw alice secret` (Mosquitto 2.0.11).
GOLDEN_LINE = (
    "alice:$7$101$iEtQXxs922yOvqSe$BiAZ1hA7oRuUYzzuYGhwSkG6zJwersyYPKDVWDCFTLGUxziLtPeG"
    "OaU0xy1e7YpBlUIYWdBQ3w8CF4XYSxePpQ=="
)


def _env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and line[0] != "#"]
    return dict(line.split("=", 1) for line in lines)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _passwd(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


# ------------------------------------------------------------------------ password hashes


def test_builtin_hash_reproduces_mosquitto_passwd_output() -> None:
    user, encoded = GOLDEN_LINE.split(":", 1)
    assert verify_mosquitto_password("secret", encoded)
    assert not verify_mosquitto_password("Secret", encoded)
    salt = base64.b64decode(encoded.split("$")[3])
    assert mosquitto_password_hash("secret", salt=salt) == encoded


@settings(max_examples=25)
@given(password=st.text(min_size=1, max_size=40))
def test_hash_round_trips_and_salts_differ(password: str) -> None:
    first = mosquitto_password_hash(password)
    second = mosquitto_password_hash(password)
    assert first != second  # fresh salt each time
    assert first.startswith(f"$7${PBKDF2_ITERATIONS}$")
    assert verify_mosquitto_password(password, first)
    assert not verify_mosquitto_password(password + "x", first)


@pytest.mark.parametrize("encoded", ["", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$!!$AAAA"])
def test_verify_rejects_malformed_hashes(encoded: str) -> None:
    assert not verify_mosquitto_password("pw", encoded)


# ------------------------------------------------------------------------------ the kit


@pytest.mark.parametrize("hasher", ["builtin", "mosquitto_passwd"])
def test_kit_layout_credentials_and_modes(tmp_path: Path, hasher: str) -> None:
    if hasher == "mosquitto_passwd" and shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    out = tmp_path / "kit"
    result = provision(
        ["pi-01", "pi-02"], out, federation="lab", broker_host="gw.example", port=8884,
        hasher=hasher,  # type: ignore[arg-type]
    )
    assert result.password_tool == hasher
    assert result.broker_url == "mqtts://gw.example:8884"
    for name in ["passwd", "acl", "mosquitto.conf", "coordinator.env", "README.txt",
                 "federation.toml",
                 "nodes/pi-01.env", "nodes/pi-02.env", "systemd/mpfl-edge.service",
                 "systemd/mpfl-coordinator.service", "grafana-dashboard.json"]:
        assert (out / name) in result.files and (out / name).is_file(), name
    assert (out / "certs").is_dir()

    for secret in ["passwd", "coordinator.env", "nodes/pi-01.env", "nodes/pi-02.env"]:
        assert _mode(out / secret) == 0o600, secret

    hashes = _passwd(out / "passwd")
    assert set(hashes) == {"coordinator", "pi-01", "pi-02"}
    everyone = {"coordinator": result.coordinator, **result.nodes}
    for user, creds in everyone.items():
        assert verify_mosquitto_password(creds.password, hashes[user])
        assert creds.password not in (out / "passwd").read_text()
        assert len(creds.password) >= 32
        assert creds.password not in repr(result)
    assert len({c.password for c in everyone.values()}) == 3

    node_env = _env(out / "nodes/pi-02.env")
    assert node_env == {
        "MPFL_BROKER": "mqtts://gw.example:8884",
        "MPFL_FEDERATION": "lab",
        "MPFL_NODE_ID": "pi-02",
        "MPFL_USERNAME": "pi-02",
        "MPFL_PASSWORD": result.nodes["pi-02"].password,
        "MPFL_CA_FILE": "/etc/mpfl/ca.crt",
        "MPFL_KEY": "/etc/mpfl/node.key",
        "MPFL_COORDINATOR_KEY": "/etc/mpfl/coordinator.pub",
        "MPFL_EDGE_ARGS": "--dataset npz --data-dir /var/lib/mpfl/data",
    }
    coordinator_env = _env(out / "coordinator.env")
    assert coordinator_env["MPFL_USERNAME"] == "coordinator"
    assert coordinator_env["MPFL_PASSWORD"] == result.coordinator.password
    assert "MPFL_NODE_ID" not in coordinator_env
    assert coordinator_env["MPFL_KEY"] == "/etc/mpfl/coordinator.key"
    assert coordinator_env["MPFL_ENROLMENT"] == "/etc/mpfl/enrolled.toml"


def test_the_kit_holds_every_identity(tmp_path: Path) -> None:
    from mpfl.wire.signing import Keyring, PublicKey, SigningKey

    out = tmp_path / "kit"
    result = provision(["pi-01", "pi-02"], out, hasher="builtin")
    enrolled = Keyring.load_enrolment(out / "enrolled.toml")
    assert set(enrolled.nodes) == {"pi-01", "pi-02"}
    coordinator = SigningKey.load(out / "coordinator.key")
    assert PublicKey.load(out / "coordinator.pub") == coordinator.public_key
    for node in ("pi-01", "pi-02"):
        key = out / "nodes" / f"{node}.key"
        assert _mode(key) == 0o600 and key in result.files
        assert SigningKey.load(key).public_key == enrolled.node(node)
    assert _mode(out / "coordinator.key") == 0o600
    readme = (out / "README.txt").read_text()
    assert "coordinator.key" in readme and "node.key" in readme and "enrolled.toml" in readme


def test_acl_gives_each_node_only_its_own_topics(tmp_path: Path) -> None:
    provision(["a", "b_2"], tmp_path / "kit", federation="fed", hasher="builtin")
    rules: dict[str, list[str]] = {}
    user = None
    for line in (tmp_path / "kit" / "acl").read_text().splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            rules[user] = []
        elif line.startswith("topic "):
            assert user is not None, "topic rule before any user applies to anonymous clients"
            rules[user].append(line)
    read_server = f"topic read {server_filter('fed')}"
    assert rules == {
        "coordinator": [
            f"topic read {nodes_filter('fed')}",
            f"topic readwrite {server_filter('fed')}",
        ],
        "a": [f"topic write {node_filter('fed', 'a')}", read_server],
        "b_2": [f"topic write {node_filter('fed', 'b_2')}", read_server],
    }


def test_a_regional_kit_lets_its_coordinator_read_the_root_and_write_its_own_topics(
    tmp_path: Path,
) -> None:
    provision(["e1"], tmp_path / "kit", federation="fed", hasher="builtin", region="east")
    acl = (tmp_path / "kit" / "acl").read_text()
    coordinator = acl.split("user coordinator\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert coordinator == [f"topic read {nodes_filter('fed')}",
                           f"topic read {server_filter('fed')}",
                           f"topic write {node_filter('fed', 'east')}"]


def test_broker_config_points_into_the_broker_dir(tmp_path: Path) -> None:
    provision(
        ["pi-01"], tmp_path / "kit", port=9999, broker_dir="/srv/mq/", persistence_dir="/var/mq",
        hasher="builtin",
    )
    conf = (tmp_path / "kit" / "mosquitto.conf").read_text()
    settings_ = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for line in conf.splitlines()
        if line and not line.startswith("#") and " " in line and not line.startswith("log_type")
    }
    assert "${" not in conf
    assert settings_["listener"] == "9999"
    assert settings_["allow_anonymous"] == "false"
    assert settings_["password_file"] == "/srv/mq/passwd"
    assert settings_["acl_file"] == "/srv/mq/acl"
    assert settings_["cafile"] == "/srv/mq/certs/ca.crt"
    assert settings_["certfile"] == "/srv/mq/certs/server.crt"
    assert settings_["keyfile"] == "/srv/mq/certs/server.key"
    assert settings_["persistence_location"] == "/var/mq/"
    assert "#listener 1883 127.0.0.1" in conf


def test_generated_config_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    binary = shutil.which("mosquitto", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if binary is None:
        pytest.skip("mosquitto is not installed")
    # `mosquitto --test-config` does not exist in 2.0; a config with an unknown option makes
    # the broker exit at once with "Unknown configuration variable", a valid one would run.
    provision(["pi-01"], tmp_path / "kit", hasher="builtin")
    conf = (tmp_path / "kit" / "mosquitto.conf").read_text()
    known = {line.split()[0] for line in conf.splitlines() if line and line[0] != "#"}
    bogus = tmp_path / "bogus.conf"
    bogus.write_text(conf + "no_such_option 1\n")
    done = subprocess.run([binary, "-c", str(bogus)], capture_output=True, text=True, timeout=10)
    assert "no_such_option" in done.stdout + done.stderr
    for option in known:  # none of the template's own options is reported as unknown
        assert f'"{option}"' not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("nodes", "kwargs", "needle"),
    [
        ([], {}, "at least one"),
        (["pi 01"], {}, "invalid node id"),
        (["pi/01"], {}, "invalid node id"),
        (["x" * 65], {}, "invalid node id"),
        (["pi-01", "pi-02", "pi-01"], {}, "duplicate node ids: pi-01"),
        (["coordinator"], {}, "coordinator user"),
        (["pi-01"], {"federation": "a/b"}, "invalid federation"),
        (["pi-01"], {"broker_host": "gw local"}, "invalid broker host"),
        (["pi-01"], {"port": 70000}, "port"),
        (["pi-01"], {"hasher": "md5"}, "unknown password hasher"),
        ("pi-01", {}, "sequence"),
    ],
)
def test_bad_input_is_a_config_error_and_writes_nothing(
    tmp_path: Path, nodes: list[str], kwargs: dict, needle: str
) -> None:
    out = tmp_path / "kit"
    with pytest.raises(ConfigError, match=needle):
        provision(nodes, out, **kwargs)
    assert not out.exists()


def test_refuses_to_overwrite_a_kit_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "kit"
    first = provision(["pi-01", "pi-02"], out, hasher="builtin")
    cert = out / "certs" / "ca.crt"
    cert.write_text("user's certificate")
    before = (out / "passwd").read_text()
    with pytest.raises(ConfigError, match="not empty"):
        provision(["pi-01"], out, hasher="builtin")
    assert (out / "passwd").read_text() == before

    second = provision(["pi-01", "pi-03"], out, hasher="builtin", force=True)
    assert sorted(p.name for p in (out / "nodes").iterdir()) == [
        "pi-01.env", "pi-01.key", "pi-03.env", "pi-03.key"]
    assert second.nodes["pi-01"].password != first.nodes["pi-01"].password
    assert set(_passwd(out / "passwd")) == {"coordinator", "pi-01", "pi-03"}
    assert cert.read_text() == "user's certificate"


def test_ipv6_broker_host_is_bracketed(tmp_path: Path) -> None:
    result = provision(["n1"], tmp_path / "kit", broker_host="fd00::1", hasher="builtin")
    assert result.broker_url == "mqtts://[fd00::1]:8883"
    assert "subjectAltName=IP:fd00::1" in (tmp_path / "kit" / "README.txt").read_text()


# ----------------------------------------------------------------------------------- CLI


def test_cli_writes_a_kit_without_printing_secrets(tmp_path: Path) -> None:
    out = tmp_path / "kit"
    result = CliRunner().invoke(
        provision_command,
        ["--nodes", "pi-01, pi-02", "--out", str(out), "--federation", "lab",
         "--broker-host", "10.0.0.2", "--port", "8883"],
    )
    assert result.exit_code == 0, result.output
    assert "2 nodes" in result.output and "mqtts://10.0.0.2:8883" in result.output
    for env in (out / "nodes").glob("*.env"):
        assert _env(env)["MPFL_PASSWORD"] not in result.output
    assert _env(out / "nodes" / "pi-02.env")["MPFL_FEDERATION"] == "lab"

    again = CliRunner().invoke(provision_command, ["--nodes", "pi-01", "--out", str(out)])
    assert again.exit_code == 2
    assert "not empty" in again.output and "Traceback" not in again.output


def test_cli_reports_bad_node_ids_with_the_config_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        provision_command, ["--nodes", "pi-01,,pi-02", "--out", str(tmp_path / "kit")],
        prog_name="mpfl-coordinator",
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpfl-coordinator: error: invalid node id")


def test_deploy_templates_ship_with_the_coordinator_package() -> None:
    """The kit renders templates found through resources.files("coordinator"); a wheel
    carries them only if pyproject's package data names them."""
    deploy = resources.files("coordinator").joinpath("deploy")
    shipped = sorted(item.name for item in deploy.iterdir() if item.is_file())
    assert shipped == sorted(
        ["grafana-dashboard.json", "mosquitto-bridge.conf.template", "mosquitto.conf.template",
         *UNITS]
    )
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["coordinator"]
    for name in shipped:
        assert any(fnmatch.fnmatch(f"deploy/{name}", pattern) for pattern in globs), name


@pytest.mark.parametrize("unit", UNITS)
def test_units_do_not_restart_on_errors_a_restart_cannot_fix(unit: str) -> None:
    from coordinator.provision.templates import deploy_text
    from mpfl.errors import PERMANENT, ExitCode

    lines = [line for line in deploy_text(unit).splitlines()
             if line.startswith("RestartPreventExitStatus=")]
    assert len(lines) == 1
    codes = {int(code) for code in lines[0].split("=", 1)[1].split()}
    assert codes == {int(code) for code in PERMANENT}
    assert ExitCode.BROKER_UNREACHABLE not in codes  # the broker may come back


def test_the_certificate_names_the_host_and_its_addresses(tmp_path: Path) -> None:
    provision(["n1"], tmp_path / "kit", broker_host="gw.lan", broker_ips=["10.0.0.2"],
              hasher="builtin")
    readme = (tmp_path / "kit" / "README.txt").read_text()
    assert "subjectAltName=DNS:gw.lan,IP:10.0.0.2" in readme
    provision(["n1"], tmp_path / "bare", broker_host="gw.lan", hasher="builtin")
    assert "--broker-ip ADDRESS" in (tmp_path / "bare" / "README.txt").read_text()
    with pytest.raises(ConfigError, match="must be an IP address"):
        provision(["n1"], tmp_path / "bad", broker_host="gw.lan", broker_ips=["gw2.lan"],
                  hasher="builtin")
