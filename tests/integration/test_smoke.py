from broker.v1 import inventory_service_pb2


def test_list_kinds_describes_configured_kinds(inventory_stub):
    response = inventory_stub.ListKinds(inventory_service_pb2.ListKindsRequest(), timeout=10)
    kinds = {kind.name: kind for kind in response.kinds}
    assert set(kinds) == {"Calculator", "Phone", "Licence"}
    assert kinds["Licence"].ownable is False
    assert [f.name for f in kinds["Phone"].fields] == ["os", "version", "rooted", "battery"]
