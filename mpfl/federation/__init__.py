"""Round state machines of the node and the coordinator (sans I/O) with the coordinator's
pieces (round in progress and mode, shared weights, checkpoint format, byte count,
injected evaluation), the transport seam with its in-memory broker, the in-process
simulation, and the round records."""
