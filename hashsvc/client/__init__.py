"""The command line, the gRPC client, directory ingest and bulk loading."""
