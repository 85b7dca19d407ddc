"""tcpwatch: per-state TCP socket observability for Prometheus."""

__version__ = "0.1.0"
