"""The broker's HTTP side, served on the gRPC server's event loop: health
and metrics (`site`), and the contract over HTTP/JSON (`gateway`)."""
