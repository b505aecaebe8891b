"""Typed client for the control-plane resolver.

from controlplane_resolver_client import ResolverClient

with ResolverClient("127.0.0.1:50051") as client:
    env = client.resolve_env("cm4…")        # None when the environment is absent
"""

from .client import ResolverClient, ResolverError
from .v1 import resolver_pb2 as pb

__all__ = ["ResolverClient", "ResolverError", "pb"]
