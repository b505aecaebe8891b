"""controlplane-resolver: answers control-plane questions and reads runs
across the control-plane and run-ops databases for engine nodes."""

__version__ = "0.1.0"
