"""The public, versioned contract ``controlplane.resolver.v1``.

Engine nodes and the server import the generated code through this module,
never from ``_gen`` (generated, private, free to move)::

    from controlplane_resolver_client.v1 import resolver_pb2, resolver_pb2_grpc

``resolver_pb2`` holds the messages and enums, ``resolver_pb2_grpc`` the
stub and servicer base class. A wire-incompatible change to the contract
gets a new package (``v2``) beside this one.
"""

from __future__ import annotations

from ._gen.controlplane.resolver.v1 import resolver_pb2 as resolver_pb2
from ._gen.controlplane.resolver.v1 import resolver_pb2_grpc as resolver_pb2_grpc

#: The service's descriptor, for reflection and for listing its methods.
SERVICE = resolver_pb2.DESCRIPTOR.services_by_name["ControlPlaneResolverService"]
#: ``controlplane.resolver.v1.ControlPlaneResolverService``: the gRPC
#: service name, also the health-check service name of a ready server.
SERVICE_NAME: str = SERVICE.full_name
__all__ = ["SERVICE_NAME", "resolver_pb2", "resolver_pb2_grpc"]
