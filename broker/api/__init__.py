"""The gRPC edge: servicers that translate between messages and the domain."""
