"""Typed client for the control-plane resolver.

from controlplane_resolver_client import ResolverClient

with ResolverClient("127.0.0.1:50051") as client:
    env = client.resolve_env("cm4…")        # None when the environment is absent
"""

from .aio import AsyncResolverClient, create_aio_channel
from .client import (
    BareChannelWarning,
    CallableStatusCode,
    ResolverClient,
    ResolverError,
    channel_options,
    create_channel,
    service_config,
)
from .near_cache import NearCache, NearCacheStats, StreamState
from .v1 import resolver_pb2 as pb

__all__ = [
    "AsyncResolverClient",
    "BareChannelWarning",
    "CallableStatusCode",
    "NearCache",
    "NearCacheStats",
    "ResolverClient",
    "ResolverError",
    "StreamState",
    "channel_options",
    "create_aio_channel",
    "create_channel",
    "pb",
    "service_config",
]
