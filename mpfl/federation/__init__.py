"""Round state machines of the node and the coordinator (sans I/O), the transport seam
with its in-memory broker, the in-process simulation, and the round records."""
