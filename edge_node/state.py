"""The node's memory across restarts: the last finished round and the bytes it sent.

One ``.npz`` per (federation, node), written atomically, read with ``allow_pickle=False``:
scalars and strings as 0-d / 1-d arrays, each message payload as a uint8 array. With it a
restarted node neither retrains nor re-sends a round it already finished, and can still
resend the exact same bytes when a restarted coordinator asks for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpfl.errors import ModelError
from mpfl.federation.node import Finished
from mpfl.ml.checkpoint import read_npz, write_npz
from mpfl.wire import topics
from mpfl.wire.protocol import Publish


def state_path(state_dir: Path, federation: str, node_id: str) -> Path:
    return state_dir / f"{topics.validate_name(federation)}.{topics.validate_node_id(node_id)}.npz"


def save_finished(path: Path, finished: Finished) -> None:
    arrays: dict[str, np.ndarray] = {
        "round": np.asarray(finished.round, dtype=np.int64),
        "session": np.asarray(finished.session),
        "run": np.asarray(finished.run),
        "topics": np.asarray([m.topic for m in finished.messages], dtype=str),
        "retain": np.asarray([m.retain for m in finished.messages], dtype=bool),
        "qos": np.asarray([m.qos for m in finished.messages], dtype=np.int64),
    }
    for i, message in enumerate(finished.messages):
        arrays[f"payload_{i}"] = np.frombuffer(message.payload, dtype=np.uint8)
    write_npz(path, arrays)


def load_finished(path: Path, federation: str, node_id: str) -> Finished | None:
    """The saved round, or None when there is none (or it belongs to another node)."""
    if not path.is_file():
        return None
    arrays = read_npz(path)
    try:
        names = [str(t) for t in arrays["topics"].reshape(-1)]
        messages = [
            Publish(topic, arrays[f"payload_{i}"].astype(np.uint8).tobytes(),
                    bool(arrays["retain"][i]), int(arrays["qos"][i]))
            for i, topic in enumerate(names)
        ]
        finished = Finished(int(arrays["round"]), str(arrays["session"]), messages,
                            str(arrays["run"]))
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ModelError(f"unreadable node state: {exc}", path=str(path)) from exc
    own = topics.node_filter(federation, node_id)[:-1]
    if any(not m.topic.startswith(own) for m in messages):
        return None
    return finished
