"""Implementations of the ports: the only modules that import third-party I/O clients."""
