"""The HTTP front ends of hashsvc, beside the gRPC API and over the same core:
the HTTP/JSON API for pipelines that cannot speak gRPC comfortably (served by
`hashsvc serve --http-listen` in the same process, with the same tokens, roles
(hashsvc/core/auth.py RPC_ROLES: each route names its RPC), limits and history),
and the web console for people (console/, mounted at /ui). No protobuf here: the
JSON comes from the core's records and hashsvc/base/match_json.py."""
