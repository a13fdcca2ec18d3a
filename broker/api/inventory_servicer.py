"""`broker.v1.InventoryService`: each method converts in, makes one domain
call (through the runner), converts out. Validation and errors are the
interceptor's."""

from __future__ import annotations

from broker.api import convert, identity
from broker.api.runner import Runner
from broker.domain.inventory import Inventory
from broker.v1 import inventory_service_pb2 as pb
from broker.v1 import inventory_service_pb2_grpc


class InventoryServicer(inventory_service_pb2_grpc.InventoryServiceServicer):
    def __init__(self, inventory: Inventory, run: Runner):
        self.inventory = inventory
        self.run = run

    async def ListKinds(self, request, context):
        kinds = await self.run(self.inventory.list_kinds)
        return pb.ListKindsResponse(kinds=[convert.kind_to_proto(kind) for kind in kinds])

    async def CreateResource(self, request, context):
        view = await self.run(
            self.inventory.create, convert.new_resource(request.resource), identity.caller(context)
        )
        return pb.CreateResourceResponse(resource=convert.resource_to_proto(view))

    async def GetResource(self, request, context):
        view = await self.run(self.inventory.get, request.name, identity.visible_groups())
        return pb.GetResourceResponse(resource=convert.resource_to_proto(view))

    async def ListResources(self, request, context):
        page = await self.run(
            self.inventory.list,
            request.kind,
            [convert.constraint(c) for c in request.constraints],
            request.page_size,
            request.page_token,
            identity.visible_groups(),
        )
        return pb.ListResourcesResponse(
            resources=[convert.resource_to_proto(view) for view in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateResource(self, request, context):
        view = await self.run(
            self.inventory.update, convert.resource_patch(request), identity.caller(context)
        )
        return pb.UpdateResourceResponse(resource=convert.resource_to_proto(view))

    async def DeleteResource(self, request, context):
        await self.run(self.inventory.delete, request.name, request.etag, identity.caller(context))
        return pb.DeleteResourceResponse()

    async def SetOutOfService(self, request, context):
        view = await self.run(
            self.inventory.set_out_of_service,
            request.name,
            request.reason,
            identity.caller(context),
        )
        return pb.SetOutOfServiceResponse(resource=convert.resource_to_proto(view))

    async def ReturnToService(self, request, context):
        view = await self.run(
            self.inventory.return_to_service, request.name, identity.caller(context)
        )
        return pb.ReturnToServiceResponse(resource=convert.resource_to_proto(view))
