"""gRPC: servicers, converters, interceptors and limits, server wiring, metrics."""
