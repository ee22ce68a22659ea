"""The pure pieces around the MQTT clients: broker URLs, the inbox hand-over with
reassembly and byte accounting, the node's saved round, config flags round trip."""

from __future__ import annotations

import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from edge_node.state import load_finished, save_finished, state_path
from mpfl.config.flags import config_options, config_to_args, pop_config_overrides
from mpfl.config.settings import FederationConfig, load_config
from mpfl.errors import ConfigError
from mpfl.federation.node import Finished
from mpfl.net.endpoint import parse_broker_url
from mpfl.net.inbox import Inbox, message_kind
from mpfl.wire.chunks import split_payload
from mpfl.wire.protocol import Publish


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [("mqtt://gw.local:1884", "gw.local", 1884, False),
     ("mqtts://10.0.0.2", "10.0.0.2", 8883, True),
     ("127.0.0.1", "127.0.0.1", 1883, False),
     ("mqtt://[::1]:1999", "::1", 1999, False)],
)
def test_broker_urls(url: str, host: str, port: int, tls: bool) -> None:
    address = parse_broker_url(url, environ={"MPFL_USERNAME": "u", "MPFL_PASSWORD": "secret"})
    assert (address.host, address.port, address.tls) == (host, port, tls)
    assert address.username == "u" and "secret" not in repr(address)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://u:p@host", "mqtt://h:99999",
                                 "mqtt://h/path"])
def test_bad_broker_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_broker_url(url)


def test_ca_file_needs_tls() -> None:
    with pytest.raises(ConfigError, match="mqtts"):
        parse_broker_url("mqtt://h", ca_file="/ca.crt")


def test_inbox_hands_over_reassembles_and_counts() -> None:
    inbox = Inbox()
    got: list[tuple[str, bytes]] = []
    events: list[bool] = []
    inbox.subscribe("mpfl/v1/f/nodes/+/update", lambda t, p: got.append((t, p)))
    inbox.on_connected = events.append
    topic = "mpfl/v1/f/nodes/n1/update"
    big = bytes(range(256)) * 20
    parts = split_payload(big, 2000)
    producer = threading.Thread(target=lambda: [inbox.put(topic, p) for p in parts])
    producer.start()
    producer.join()
    inbox.put_connected(False)
    inbox.put("mpfl/v1/f/server/state", b"{}")  # not subscribed: counted, not handled
    inbox.put(topic, split_payload(bytes(3000), 2000)[0][:20])  # a broken chunk
    assert inbox.dispatch(1.0) == len(parts) + 3
    assert got == [(topic, big)] and events == [False]
    assert inbox.bad_chunks == 1
    assert inbox.ledger.received["nodes/update"] == sum(map(len, parts)) + 20
    assert inbox.ledger.received_messages["nodes/update"] == len(parts) + 1
    assert inbox.dispatch(0.0) == 0


def test_message_kinds() -> None:
    assert message_kind("mpfl/v1/f/server/model") == "server/model"
    assert message_kind("mpfl/v1/f/nodes/pi-7/metrics") == "nodes/metrics"
    assert message_kind("elsewhere") == "other"


@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=3),
       round_=st.integers(1, 10_000), session=st.text("0123456789abcdef", min_size=1, max_size=8))
def test_finished_round_survives_a_restart(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], round_: int, session: str
) -> None:
    directory = tmp_path_factory.mktemp("state")
    messages = [Publish(f"mpfl/v1/f/nodes/pi-1/{i}", p, retain=i == 0, qos=i % 2)
                for i, p in enumerate(payloads)]
    path = state_path(directory, "f", "pi-1")
    save_finished(path, Finished(round_, session, messages, "run-a"))
    assert load_finished(path, "f", "pi-1") == Finished(round_, session, messages, "run-a")
    assert load_finished(path, "f", "pi-2") is None  # another node's topics: not ours
    assert load_finished(directory / "missing.npz", "f", "pi-1") is None


def test_every_config_key_has_a_flag_and_round_trips() -> None:
    seen: dict[str, object] = {}

    @click.command()
    @config_options()
    def cmd(**kwargs: object) -> None:
        seen.update(pop_config_overrides(dict(kwargs)))

    cfg = FederationConfig(federation="x", model_args={"hidden": [8]}, delta=True,
                           final_sparsity=0.75, eval_dataset="digits")
    result = CliRunner().invoke(cmd, config_to_args(cfg))
    assert result.exit_code == 0, result.output
    assert load_config(None, seen, environ={}) == cfg


def test_state_path_rejects_unsafe_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        state_path(tmp_path, "f", "../etc")


def test_ledger_windows_split_the_totals_without_overlap() -> None:
    inbox = Inbox()
    inbox.ledger.record_sent("mpfl/v1/f/server/state", 10)
    inbox.ledger.record_received("mpfl/v1/f/nodes/pi-1/update", 30)
    assert inbox.ledger.window() == {"sent": {"server/state": 10},
                                     "received": {"nodes/update": 30}}
    inbox.ledger.record_received("mpfl/v1/f/nodes/pi-2/update", 5)
    assert inbox.ledger.window() == {"sent": {}, "received": {"nodes/update": 5}}
    assert inbox.ledger.window() == {"sent": {}, "received": {}}
    assert inbox.ledger.received["nodes/update"] == 35  # totals are untouched


def test_inbox_holds_the_network_thread_once_its_byte_budget_is_queued() -> None:
    inbox = Inbox(max_queued_bytes=100)
    inbox.subscribe("t/#", lambda _topic, _payload: None)
    inbox.put("t/a", b"x" * 80)
    inbox.put("t/b", b"x" * 80)  # below the budget when it came: taken at once
    third_queued = threading.Event()

    def network_thread() -> None:
        inbox.put("t/c", b"x" * 10)
        third_queued.set()

    threading.Thread(target=network_thread, daemon=True).start()
    assert not third_queued.wait(0.3)  # 160 bytes queued: the third put waits
    assert inbox.queued_bytes == 160
    handled = inbox.dispatch()  # draining makes room; the waiting put goes through
    assert third_queued.wait(5)
    assert handled + inbox.dispatch() == 3 and inbox.queued_bytes == 0
