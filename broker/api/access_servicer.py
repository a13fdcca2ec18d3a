"""`broker.v1.AccessService`: who the caller is, as the interceptor verified
it, so a tool (the web console, say) shows only what its user may use. It
reads nothing: the principal was verified before the call reached here."""

from __future__ import annotations

from broker.api import identity
from broker.domain.values import Role
from broker.v1 import access_service_pb2 as pb
from broker.v1 import access_service_pb2_grpc

ROLES = {
    Role.VIEWER: pb.ROLE_VIEWER,
    Role.USER: pb.ROLE_USER,
    Role.ADMIN: pb.ROLE_ADMIN,
}


class AccessServicer(access_service_pb2_grpc.AccessServiceServicer):
    def __init__(self, authentication_enabled: bool):
        self.authentication_enabled = authentication_enabled

    async def GetCaller(self, request, context):
        principal = identity.verified()
        if principal is None:
            return pb.GetCallerResponse(
                name=identity.named(context),
                role=pb.ROLE_ADMIN,
                authentication_enabled=self.authentication_enabled,
            )
        return pb.GetCallerResponse(
            name=principal.name,
            role=ROLES[principal.role],
            groups=() if principal.role == Role.ADMIN else principal.groups,
            authentication_enabled=self.authentication_enabled,
        )
