"""The HTTP/JSON API: the gRPC API's capabilities over HTTP for pipelines that
cannot speak gRPC comfortably, served by `hashsvc serve --http-listen` in the
same process, over the same core, tokens, roles (hashsvc/core/auth.py
RPC_ROLES: each route names its RPC), limits and history. No protobuf here:
the JSON comes from the core's records and hashsvc/base/match_json.py."""
