"""Typed client for the control-plane resolver.

from controlplane_resolver_client import ResolverClient

with ResolverClient("127.0.0.1:50051") as client:
    env = client.resolve_env("cm4…")        # None when the environment is absent
"""

from .client import (
    BareChannelWarning,
    CallableStatusCode,
    ResolverClient,
    ResolverError,
    channel_options,
    create_channel,
    service_config,
)
from .v1 import resolver_pb2 as pb

__all__ = [
    "BareChannelWarning",
    "CallableStatusCode",
    "ResolverClient",
    "ResolverError",
    "channel_options",
    "create_channel",
    "pb",
    "service_config",
]
