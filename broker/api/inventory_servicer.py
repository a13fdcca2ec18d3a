"""`broker.v1.InventoryService`: each method converts in, makes one domain
call, converts out. Validation and errors are the interceptor's."""

from __future__ import annotations

from broker.api import convert
from broker.domain.inventory import Inventory
from broker.v1 import inventory_service_pb2 as pb
from broker.v1 import inventory_service_pb2_grpc


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    def ListKinds(self, request, context):
        return pb.ListKindsResponse(
            kinds=[convert.kind_to_proto(kind) for kind in self.inventory.list_kinds()]
        )

    def CreateResource(self, request, context):
        view = self.inventory.create(convert.new_resource(request.resource))
        return pb.CreateResourceResponse(resource=convert.resource_to_proto(view))

    def GetResource(self, request, context):
        view = self.inventory.get(request.name)
        return pb.GetResourceResponse(resource=convert.resource_to_proto(view))

    def ListResources(self, request, context):
        page = self.inventory.list(
            request.kind,
            [convert.constraint(c) for c in request.constraints],
            request.page_size,
            request.page_token,
        )
        return pb.ListResourcesResponse(
            resources=[convert.resource_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    def UpdateResource(self, request, context):
        view = self.inventory.update(convert.resource_patch(request))
        return pb.UpdateResourceResponse(resource=convert.resource_to_proto(view))

    def DeleteResource(self, request, context):
        self.inventory.delete(request.name, request.etag)
        return pb.DeleteResourceResponse()
