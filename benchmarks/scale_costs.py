"""In-process costs behind the scale benchmark's round times, one figure per suspect.

- verifying one signed upload on the coordinator (``Opener.open``: frame, replay and
  session checks, Ed25519 over topic and frame), per upload kind: the end-to-end points of
  ``bench_scale.py`` run unsigned;
- taking one mask-round upload (decoding a node's Rice-coded LeNet-5 weight mask and
  counting its votes) and one int8 / fp32 training upload, through ``FederationServer``;
- writing the durable checkpoint a round waits for, with 50 and with 10,000 nodes.

    nice -n 19 .venv/bin/python benchmarks/scale_costs.py

Writes benchmarks/results/scale_costs.json and prints one line per figure.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import Uploads, node_id, samples  # noqa: E402
from coordinator.runstore import RunStore  # noqa: E402
from mpfl.config.settings import PLAIN_MPFL, FederationConfig  # noqa: E402
from mpfl.federation.server import FederationServer  # noqa: E402
from mpfl.wire import Kind, topics  # noqa: E402
from mpfl.wire.protocol import Hello, Publish  # noqa: E402
from mpfl.wire.seal import Opened, Opener, Sealer  # noqa: E402
from mpfl.wire.signing import Keyring, SigningKey  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale_costs.json"
KINDS = {"int8": 0.9, "fp32": 0.0}


def signature_cost(n: int = 300) -> dict[str, float]:
    """Microseconds to verify one signed upload, per upload kind."""
    keys = [SigningKey(hashlib.sha256(b"bench node %d" % i).digest()) for i in range(n)]
    keyring = Keyring(None, {node_id(i): key.public_key for i, key in enumerate(keys)})
    out = {}
    for codec, sparsity in KINDS.items():
        uploads = Uploads.build(codec, sparsity)
        opener = Opener(keyring, "sig", session=lambda: "s")
        sealed = []
        for i, key in enumerate(keys):
            topic = topics.node_topic("sig", node_id(i), topics.NODE_UPDATE)
            message = Publish(topic, uploads.envelope(i, Kind.UPDATE, 1))
            sealed.append(Sealer(key, node_id(i), "s").seal(message))
        started = time.perf_counter()
        opened = [opener.open(m.topic, m.payload) for m in sealed]
        elapsed = time.perf_counter() - started
        if not all(isinstance(o, Opened) for o in opened):
            raise SystemExit("a signed upload did not verify")
        out[codec] = elapsed / n * 1e6
    return out


def _server(n: int, codec: str) -> tuple[FederationServer, Uploads]:
    sparse = KINDS[codec] > 0
    cfg = FederationConfig(federation="cost", model="lenet5", granularity="weight",
                           mask_rounds=1 if sparse else 0, train_rounds=2, value_codec=codec,
                           **PLAIN_MPFL,
                           final_sparsity=KINDS[codec] or 0.5, min_nodes=n, quorum=n)
    server = FederationServer(cfg)
    for i in range(n):
        hello = Hello(node_id(i), samples(i), "virtual").encode()
        server.handle(topics.node_topic("cost", node_id(i), topics.NODE_STATUS), hello)
    return server, Uploads.build(codec, KINDS[codec])


def _answer_round(server: FederationServer, uploads: Uploads, n: int, kind: Kind) -> float:
    """Seconds per upload for every node's answer to the open round (which must close)."""
    name = topics.NODE_UPDATE if kind is Kind.UPDATE else topics.NODE_MASK
    t = server.round
    messages = [(topics.node_topic("cost", node_id(i), name), uploads.envelope(i, kind, t))
                for i in range(n)]
    started = time.perf_counter()
    closed = [server.handle(topic, payload).closed for topic, payload in messages]
    elapsed = time.perf_counter() - started
    if closed[-1] is None or closed[-1].dropped:
        raise SystemExit(f"the {kind.name} round did not close cleanly")
    return elapsed / n


def upload_costs(n: int = 1000) -> dict[str, float]:
    """Microseconds per upload taken by FederationServer.handle, by upload kind."""
    out = {}
    server, uploads = _server(n, "int8")
    out["mask"] = _answer_round(server, uploads, n, Kind.LOCAL_MASK) * 1e6
    out["int8"] = _answer_round(server, uploads, n, Kind.UPDATE) * 1e6
    server, uploads = _server(n, "fp32")
    out["fp32"] = _answer_round(server, uploads, n, Kind.UPDATE) * 1e6
    return out


def checkpoint_cost(n: int, repeats: int = 7) -> float:
    """Median milliseconds of the durable checkpoint after a training round of n nodes."""
    server, uploads = _server(n, "int8")
    _answer_round(server, uploads, n, Kind.LOCAL_MASK)
    _answer_round(server, uploads, n, Kind.UPDATE)
    with tempfile.TemporaryDirectory(prefix="mpfl-cost-") as tmp:
        store = RunStore(Path(tmp))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            store.save(server, {})
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    started = time.monotonic()
    result: dict[str, object] = {
        "verify_us_per_upload": signature_cost(),
        "handle_us_per_upload_1000_nodes": upload_costs(),
        "checkpoint_ms": {str(n): checkpoint_cost(n) for n in (50, 10_000)},
    }
    result["wall_seconds"] = time.monotonic() - started
    result["command"] = "nice -n 19 .venv/bin/python benchmarks/scale_costs.py"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in result.items():
        print(f"{name}: {figures}")


if __name__ == "__main__":
    main()
