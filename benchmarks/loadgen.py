"""A load generator: many virtual nodes over real MQTT connections to a real broker.

Each virtual node is enrolled (a retained hello on its status topic) and answers every
round the coordinator opens with a PRECOMPUTED upload: its local mask in a mask round, its
values in a training round, coded once before the run (the envelope around them, which
holds the round number, is framed when the round opens). Nothing is trained.

A worker process holds many MQTT connections and drives them all from one thread with a
selector over paho's sockets (paho's external-loop API), so a thousand connections need
no thousand threads. A connection serves one node or several: every node publishes on
its own topics, so the coordinator sees distinct enrolled nodes either way; sharing only
lets one machine stand in for more nodes than it can hold sockets.

Virtual node ``i`` sends values variant ``i % VARIANTS`` with ``samples(i)`` samples, so an
aggregate can be computed directly from the variants (``expected_average``). In a mask
round every node sends the same mask ``fleet_mask``: top-votes' consensus of identical
masks that each keep exactly the per-layer quota is that mask, so the training rounds'
value layout is known in advance; a worker checks the published mask against it.

The raw reference: on a trigger message the same connections publish the same upload
bytes on topics of another prefix, which nothing but a plain subscriber reads
(``RawSubscriber``).

    python benchmarks/loadgen.py worker URL FEDERATION CODEC SPARSITY FIRST:LAST CONNECTIONS
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpfl.choices import ModelName  # noqa: E402
from mpfl.maths.consensus import VoteInput, top_votes  # noqa: E402
from mpfl.ml.models import ModelSpec, build_model  # noqa: E402
from mpfl.ml.units import UnitMap, build_unit_map  # noqa: E402
from mpfl.wire import (  # noqa: E402
    Envelope,
    Kind,
    decode_envelope,
    decode_mask,
    decode_values,
    encode_envelope,
    encode_mask,
    encode_values,
    topics,
)
from mpfl.wire.protocol import Hello, encode_update  # noqa: E402

VARIANTS = 8
MODEL = ModelSpec(ModelName.LENET5)
CONNECT_TIMEOUT_S = 120.0


def node_id(i: int) -> str:
    return f"v{i:05d}"


def samples(i: int) -> int:
    """A node's sample count: varied, so the average is a weighted one."""
    return 50 + 10 * (i % 13)


def raw_federation(federation: str) -> str:
    return f"{federation}-raw"


def trigger_topic(federation: str) -> str:
    return f"bench/{federation}/trigger"


def unit_map() -> UnitMap:
    return build_unit_map(build_model(MODEL, seed=0), MODEL, "weight")


def fleet_mask(units: UnitMap, sparsity: float) -> np.ndarray:
    """The mask every virtual node sends: per layer, the quota top-votes keeps at
    ``sparsity`` (all ones at 0), chosen by a seeded random score."""
    if sparsity <= 0:
        return units.full_mask()
    score = np.random.default_rng(1).random(units.n_units)
    return top_votes(VoteInput(score, units.full_mask(), tuple(units.slices), sparsity, 1))


def value_bodies(units: UnitMap, mask: np.ndarray, codec: str) -> list[tuple[int, bytes]]:
    """The VARIANTS value payloads (codec id, bytes) under ``mask``, without sample counts."""
    sizes = units.layer_sizes(mask)
    out: list[tuple[int, bytes]] = []
    for k in range(VARIANTS):
        values = np.random.default_rng(100 + k).normal(0, 0.05, sum(sizes)).astype(np.float32)
        value_codec, body = encode_values(values, sizes, codec)
        out.append((int(value_codec), body))
    return out


def expected_average(units: UnitMap, mask: np.ndarray, codec: str, n_nodes: int) -> np.ndarray:
    """FedAvg of ``n_nodes`` virtual nodes' uploads, computed directly (float64 sums)."""
    sizes = units.layer_sizes(mask)
    decoded = [decode_values(c, body, sizes) for c, body in value_bodies(units, mask, codec)]
    weights = np.zeros(VARIANTS)
    for i in range(n_nodes):
        weights[i % VARIANTS] += samples(i)
    total = np.zeros(sum(sizes), dtype=np.float64)
    for k in range(VARIANTS):
        total += weights[k] * decoded[k].astype(np.float64)
    return (total / weights.sum()).astype(np.float32)


# -- the worker process ---------------------------------------------------------------------


@dataclass
class Uploads:
    """Everything a worker sends, coded once."""

    fingerprint: bytes
    mask: np.ndarray
    mask_codec: int
    mask_payload: bytes
    values: list[tuple[int, bytes]]

    @classmethod
    def build(cls, codec: str, sparsity: float) -> Uploads:
        units = unit_map()
        mask = fleet_mask(units, sparsity)
        mask_codec, mask_payload = encode_mask(mask, units.full_mask())
        return cls(units.fingerprint, mask, int(mask_codec), mask_payload,
                   value_bodies(units, mask, codec))

    def envelope(self, i: int, kind: Kind, t: int) -> bytes:
        if kind is Kind.LOCAL_MASK:
            codec, payload = self.mask_codec, self.mask_payload
        else:
            codec, body = self.values[i % VARIANTS]
            payload = encode_update(samples(i), body)
        return encode_envelope(Envelope(kind, t, self.fingerprint, node_id(i), codec, payload))


class Connection:
    """One MQTT connection carrying the topics of ``nodes``."""

    def __init__(self, loop: Loop, name: str, federation: str, nodes: list[int]) -> None:
        self.loop = loop
        self.federation = federation
        self.nodes = nodes
        self.answered: set[tuple[str, int, str]] = set()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                  protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(0)  # no client-side cap: the broker paces
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.loop.subscribed.add(name)
        self.client.on_message = self._on_message
        self.client.on_socket_register_write = lambda *_a: loop.want_write(self, True)
        self.client.on_socket_unregister_write = lambda *_a: loop.want_write(self, False)

    def _on_connect(self, client: paho.Client, *_args: Any) -> None:
        client.subscribe([(topics.server_topic(self.federation, topics.SERVER_STATE), 1),
                          (topics.server_topic(self.federation, topics.SERVER_MASK), 1),
                          (trigger_topic(self.federation), 1)])
        for i in self.nodes:
            status = topics.node_topic(self.federation, node_id(i), topics.NODE_STATUS)
            client.publish(status, Hello(node_id(i), samples(i), "virtual").encode(), 1, True)

    def _on_message(self, client: paho.Client, _userdata: Any, msg: Any) -> None:
        uploads = self.loop.uploads
        if msg.topic == trigger_topic(self.federation):
            raw = raw_federation(self.federation)
            for i in self.nodes:
                body = uploads.envelope(i, Kind.UPDATE, 0)
                client.publish(topics.node_topic(raw, node_id(i), topics.NODE_UPDATE), body, 1)
            return
        if msg.topic.endswith(topics.SERVER_MASK):
            env = decode_envelope(msg.payload)
            got = decode_mask(env.codec, env.payload, uploads.mask.size)
            if env.round > 0 and not np.array_equal(got, uploads.mask):
                self.loop.fail(f"the consensus of round {env.round} is not the fleet mask")
            return
        doc = json.loads(msg.payload)
        phase, t, session = str(doc["phase"]), int(doc["round"]), str(doc["session"])
        if phase not in ("mask", "train") or (phase, t, session) in self.answered:
            return
        self.answered.add((phase, t, session))
        kinds = [Kind.UPDATE] if phase == "train" else [Kind.LOCAL_MASK]
        if phase == "mask" and doc.get("mode") == "joint":
            self.loop.fail("joint mode is not simulated")
        for i in self.nodes:
            for kind in kinds:
                name = topics.NODE_UPDATE if kind is Kind.UPDATE else topics.NODE_MASK
                client.publish(topics.node_topic(self.federation, node_id(i), name),
                               uploads.envelope(i, kind, t), 1)


class Loop:
    """Drives many paho clients from one thread (paho's external-loop API)."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads
        self.selector = selectors.DefaultSelector()
        self.connections: list[Connection] = []
        self.subscribed: set[str] = set()
        self.error: str | None = None

    def fail(self, message: str) -> None:
        self.error = self.error or message

    def want_write(self, conn: Connection, on: bool) -> None:
        sock = conn.client.socket()
        if sock is None:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            self.selector.modify(sock, events, conn)
        except KeyError:  # paho asks to write while connecting, before ``add`` registered it
            self.selector.register(sock, events, conn)

    def add(self, conn: Connection, host: str, port: int) -> None:
        conn.client.connect(host, port, keepalive=600)
        self.want_write(conn, conn.client.want_write())
        self.connections.append(conn)

    def run_once(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            client = key.data.client
            if events & selectors.EVENT_READ:
                client.loop_read(100)
            if events & selectors.EVENT_WRITE:
                client.loop_write()

    def misc(self) -> None:
        for conn in self.connections:
            conn.client.loop_misc()


def worker(url: str, federation: str, codec: str, sparsity: float, first: int, last: int,
           n_connections: int) -> None:
    """Serve nodes first..last-1 over ``n_connections`` connections until stdin closes."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    loop = Loop(Uploads.build(codec, sparsity))
    ids = list(range(first, last))
    for c in range(n_connections):
        mine = ids[c::n_connections]
        if mine:
            name = f"load-{federation}-{first}-{c}"
            loop.add(Connection(loop, name, federation, mine), host, int(port))
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while len(loop.subscribed) < len(loop.connections) or any(
            c.client.want_write() for c in loop.connections):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(loop.subscribed)} of {len(loop.connections)} "
                             "connections came up")
        loop.run_once(0.1)
    sys.stdout.write(f"ready {len(loop.connections)}\n")
    sys.stdout.flush()
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    last_misc = time.monotonic()
    while not stop.is_set() and loop.error is None:
        loop.run_once(0.2)
        if time.monotonic() - last_misc > 1.0:
            loop.misc()
            last_misc = time.monotonic()
    if loop.error is not None:
        raise SystemExit(loop.error)


# -- the parent's side ----------------------------------------------------------------------


class Fleet:
    """Worker processes serving ``n_nodes`` virtual nodes over ``n_connections``."""

    def __init__(self, url: str, federation: str, n_nodes: int, n_connections: int,
                 codec: str, sparsity: float, workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        self.url, self.federation, self.n_nodes = url, federation, n_nodes
        self.connections = 0
        self.procs: list[subprocess.Popen[str]] = []
        bounds = np.linspace(0, n_nodes, workers + 1).astype(int)
        per_worker = np.linspace(0, min(n_connections, n_nodes), workers + 1).astype(int)
        for w in range(workers):
            cmd = [sys.executable, __file__, "worker", url, federation, codec, str(sparsity),
                   f"{bounds[w]}:{bounds[w + 1]}", str(per_worker[w + 1] - per_worker[w])]
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True, env=env))
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "ready":
                self.stop()
                raise SystemExit(f"a load worker did not come up (exit {proc.wait()})")
            self.connections += int(line[1])

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a load worker exited with {proc.returncode}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class RawSubscriber:
    """A plain paho subscriber that times the fleet's uploads arriving on the raw topics."""

    def __init__(self, url: str, federation: str, n_nodes: int) -> None:
        host, port = url.rsplit("/", 1)[-1].split(":")
        self.federation, self.n_nodes = federation, n_nodes
        self.count = self.bytes = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.client = self._client("raw-sub", host, int(port), self._on_message)
        self.client.subscribe(topics.nodes_filter(raw_federation(federation)), qos=1)
        self.trigger = self._client("raw-trigger", host, int(port), None)
        time.sleep(0.5)  # let the subscription settle

    @staticmethod
    def _client(name: str, host: str, port: int,
                on_message: Callable[..., None] | None) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name,
                             protocol=paho.MQTTv311)
        client.on_message = on_message
        client.connect(host, port)
        client.loop_start()
        return client

    def _on_message(self, _c: paho.Client, _u: Any, msg: Any) -> None:
        payload = bytes(msg.payload)  # as the coordinator's transport does
        with self._lock:
            self.count += 1
            self.bytes += len(payload)
            if self.count == self.n_nodes:
                self.done.set()

    def transfer(self, timeout: float) -> tuple[float, int]:
        """Seconds from the trigger until every node's upload arrived, and the bytes."""
        with self._lock:
            self.count = self.bytes = 0
        self.done.clear()
        started = time.monotonic()
        self.trigger.publish(trigger_topic(self.federation), b"go", qos=1)
        if not self.done.wait(timeout):
            raise SystemExit(f"raw transfer: {self.count} of {self.n_nodes} arrived in "
                             f"{timeout:.0f} s")
        return time.monotonic() - started, self.bytes

    def close(self) -> None:
        for client in (self.client, self.trigger):
            client.disconnect()
            client.loop_stop()


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "worker":
        lo, hi = sys.argv[6].split(":")
        worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), int(lo), int(hi),
               int(sys.argv[7]))
    else:
        raise SystemExit(__doc__)
