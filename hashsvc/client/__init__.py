"""The command line (cli.py; its commands in commands/, a module per group),
the gRPC client, directory ingest and bulk loading."""
