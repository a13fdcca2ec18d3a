"""The services of the contract this broker serves, read from their
descriptors once, for the server, the metrics, reflection and the HTTP
gateway alike, so a new service is added in one place."""

from __future__ import annotations

from broker.v1 import (
    access_service_pb2,
    event_service_pb2,
    inventory_service_pb2,
    lease_service_pb2,
)

SERVICE_MODULES = (inventory_service_pb2, lease_service_pb2, event_service_pb2, access_service_pb2)

SERVICES = tuple(
    service for module in SERVICE_MODULES for service in module.DESCRIPTOR.services_by_name.values()
)

SERVICE_NAMES = tuple(service.full_name for service in SERVICES)

# Every method's full gRPC path, `/broker.v1.LeaseService/AcquireLease`.
METHOD_PATHS = tuple(
    f"/{service.full_name}/{method.name}" for service in SERVICES for method in service.methods
)
