"""The gRPC servicer: decode, hand over to the store, acknowledge."""
