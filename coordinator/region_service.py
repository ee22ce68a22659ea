"""A regional coordinator: ``RegionalServer`` wired to its own broker.

The region talks to nothing but its own broker. That broker is bridged to the root's
(``coordinator/deploy/mosquitto-bridge.conf.template``): the root's server topics come
down the bridge to the region and to its nodes alike, and what the region publishes under
``nodes/<region>/`` (hello, last will, one partial aggregate per round) goes up it. With
``upstream`` and no broker, the region starts an embedded mosquitto with that bridge.

One thread does the work, as in the root's service: drain the inbox, tick, publish. Each
closed region round is one progress line and one JSON line in ``<run_dir>/region.jsonl``
(the bytes of this tier: nodes' uploads in, the partial out). Nothing else is kept: a
restarted region follows the root's round in progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from coordinator.broker import MosquittoBroker, mosquitto_binary
from coordinator.provision.templates import bridge_conf_text
from mpfl.config.settings import FederationConfig
from mpfl.errors import ConfigError
from mpfl.federation.region import RegionalServer, RegionRound
from mpfl.federation.region_gate import RegionGate, RegionKeys
from mpfl.net.endpoint import BrokerAddress, parse_broker_url
from mpfl.net.inbox import Inbox
from mpfl.net.mqtt import DEFAULT_MAX_PAYLOAD, MqttTransport
from mpfl.wire import topics
from mpfl.wire.protocol import Publish

log = logging.getLogger(__name__)

TICK_S = 0.2


@dataclass
class RegionOptions:
    region: str
    run_dir: Path
    broker: BrokerAddress | None = None  # the region's own broker, bridged to the root's
    upstream: BrokerAddress | None = None  # without a broker: embed one bridged here
    protocol: str = "auto"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    connect_timeout: float | None = 60.0
    keys: RegionKeys | None = None

    def __post_init__(self) -> None:
        if (self.broker is None) == (self.upstream is None):
            raise ConfigError("a region needs either --broker (its own broker, already bridged "
                              "to the root's) or --upstream (the root's broker: an embedded "
                              "one is started and bridged there), not both")


def format_region_progress(record: RegionRound, region: str) -> str:
    dropped = ",".join(f"{k}={v}" for k, v in sorted(record.dropped.items())) or "0"
    return (f"region {region} round {record.round} {record.phase:<5} answers "
            f"{len(record.participants)} nodes up {record.node_uplink_bytes:,} B, partial "
            f"{record.partial_bytes:,} B to the root, down {record.node_downlink_bytes:,} B "
            f"dropped {dropped} {record.seconds:.1f}s")


class RegionService:
    def __init__(self, cfg: FederationConfig, options: RegionOptions) -> None:
        self.cfg = cfg
        self.options = options
        self.inbox = Inbox()
        self.stop_requested: str | None = None
        self.region = RegionalServer(cfg, options.region)
        self.gate = RegionGate(self.region, options.keys)
        self.broker: MosquittoBroker | None = None
        self.transport: MqttTransport | None = None
        self._logged = 0  # region rounds already reported

    def request_stop(self, reason: str) -> None:
        self.stop_requested = reason

    def _address(self) -> BrokerAddress:
        if self.options.broker is not None:
            return self.options.broker
        upstream = self.options.upstream
        assert upstream is not None
        if upstream.tls and upstream.ca_file is None:
            raise ConfigError("an mqtts:// upstream needs --ca-file: the bridge checks the "
                              "root broker's certificate")
        binary = mosquitto_binary()
        if binary is None:
            raise ConfigError("an embedded regional broker needs mosquitto (its bridge); "
                              "install it or pass --broker")
        bridge = bridge_conf_text(federation=self.cfg.federation, region=self.options.region,
                                  upstream_host=upstream.host, upstream_port=upstream.port,
                                  username=upstream.username, password=upstream.password,
                                  cafile=upstream.ca_file if upstream.tls else None)
        self.broker = MosquittoBroker(binary, extra=bridge).start()
        log.info(f"embedded regional broker on {self.broker.url}, bridged to {upstream.url}")
        return parse_broker_url(self.broker.url)

    def run(self) -> RegionalServer:
        region, fed = self.region, self.cfg.federation
        try:
            address = self._address()
            self.transport = MqttTransport(
                address, f"mpfl-region-{fed}-{region.region}", self.inbox,
                will=self.gate.will, protocol=self.options.protocol,
                max_payload=self.options.max_payload)
            # The root's state first, so the retained node hellos meet a known session.
            self.inbox.subscribe(topics.server_filter(fed), self._on_message)
            self.inbox.subscribe(topics.nodes_filter(fed), self._on_message)
            self.transport.connect(self.options.connect_timeout)
            log.info(f"region {region.region} of federation '{fed}': waiting for the root's "
                      f"state on {address.url} and for {self.cfg.min_nodes} node(s)")
            while not region.finished and self.stop_requested is None:
                self.inbox.dispatch(TICK_S)
                self.transport.revive()
                self._publish(region.tick())
                for reason, count in self.inbox.new_chunk_drops("malformed").items():
                    region.record_drop(reason, count)
            if region.finished:
                assert region.state is not None
                log.info(f"region {region.region}: the root says {region.state.phase}; "
                          f"{len(region.log)} round(s) forwarded")
            else:
                log.info(f"region {region.region}: stopped ({self.stop_requested}); it keeps "
                          "nothing on disk: run it again to rejoin the root's next round")
        finally:
            if self.transport is not None:  # flushes the last partial, then says offline
                self.transport.close(final=self.gate.will())
            if self.broker is not None:
                self.broker.stop()
        return region

    def _on_message(self, topic: str, payload: bytes) -> None:
        opened = self.gate.open(topic, payload)
        self._publish(self.region.tick() if opened is None
                      else self.region.handle(topic, opened))

    def _publish(self, messages: list[Publish]) -> None:
        assert self.transport is not None
        for message in self.gate.seal(messages):
            self.transport.publish(message)
        for record in self.region.log[self._logged:]:
            self._record(record)
        self._logged = len(self.region.log)

    def _record(self, record: RegionRound) -> None:
        log.info(format_region_progress(record, self.region.region))
        self.options.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.options.run_dir / "region.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n")
