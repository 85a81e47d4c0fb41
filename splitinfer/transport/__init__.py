"""gRPC plumbing shared by every service: options, error mapping, tensor streams."""
