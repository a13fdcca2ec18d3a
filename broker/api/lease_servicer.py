"""`broker.v1.LeaseService`: each method converts in, makes one domain call,
converts out. Validation and errors are the interceptor's."""

from __future__ import annotations

from broker.api import convert, identity
from broker.domain.leasing import Leases
from broker.v1 import lease_service_pb2 as pb
from broker.v1 import lease_service_pb2_grpc


class LeaseServicer(lease_service_pb2_grpc.LeaseServiceServicer):
    def __init__(self, leases: Leases):
        self.leases = leases

    def AcquireLease(self, request, context):
        holder = identity.holder(request.holder, context)
        granted = self.leases.acquire(convert.acquire_request(request, holder))
        return pb.AcquireLeaseResponse(
            lease=convert.lease_to_proto(granted.lease), secret=granted.secret
        )

    def RenewLease(self, request, context):
        view = self.leases.renew(request.lease_id, request.secret)
        return pb.RenewLeaseResponse(lease=convert.lease_to_proto(view))

    def ReleaseLease(self, request, context):
        view = self.leases.release(request.lease_id, request.secret)
        return pb.ReleaseLeaseResponse(lease=convert.lease_to_proto(view))

    def GetLease(self, request, context):
        view = self.leases.get(request.lease_id)
        return pb.GetLeaseResponse(lease=convert.lease_to_proto(view))

    def ListLeases(self, request, context):
        page = self.leases.list(
            convert.lease_state(request.state),
            request.holder,
            request.resource,
            request.page_size,
            request.page_token,
        )
        return pb.ListLeasesResponse(
            leases=[convert.lease_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    def RevokeLease(self, request, context):
        view = self.leases.revoke(request.lease_id, request.reason, identity.caller(context))
        return pb.RevokeLeaseResponse(lease=convert.lease_to_proto(view))
