"""Homeostat: a Kubernetes operator that keeps replicated services healthy by itself.

The package is layered: ``core`` holds pure decision logic, ``adapters`` talk to the outside
world (Kubernetes, Prometheus, Slack), ``handlers`` wire kopf events to the core, and ``cli`` is
the entry point. The layers are enforced by import-linter contracts in ``.importlinter``.
"""

__version__ = "0.1.0"
