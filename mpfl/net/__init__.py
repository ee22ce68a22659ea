"""Network I/O: the one module that imports paho, its inbox, broker addresses."""
