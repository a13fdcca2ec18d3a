"""The resource broker: who holds which lab resource, decided over gRPC."""

__version__ = "0.1.0"
