"""The proto is the contract for clients in other languages (issue 17): a
client written from protos/hashsvc/v1/hashsvc.proto alone must learn from it
who may call what. Its comments are read as protoc parses them (source info
kept), not by pattern-matching the text."""

from __future__ import annotations

import re
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from hashsvc.core import auth

PROTOS = Path(__file__).resolve().parent.parent / "protos"
PROTO = "hashsvc/v1/hashsvc.proto"
# FileDescriptorProto field numbers: service = 6, ServiceDescriptorProto.method = 2
_SERVICE, _METHOD = 6, 2


@pytest.fixture(scope="module")
def proto_file(tmp_path_factory) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path_factory.mktemp("proto") / "hashsvc.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            str(PROTOS / PROTO),
        ]
    )
    assert status == 0, "protoc failed on the proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return next(f for f in files.file if f.name == PROTO)


def _method_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """'/hashsvc.v1.Service/Method' -> the comment above the rpc line."""
    by_path = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
    return {
        f"/{file.package}.{service.name}/{method.name}": by_path.get((_SERVICE, s, _METHOD, m), "")
        for s, service in enumerate(file.service)
        for m, method in enumerate(service.method)
    }


def test_every_rpc_names_its_roles_as_the_role_table_does(proto_file):
    """Each rpc's comment ends with "Roles: a, b." listing exactly the roles
    of RPC_ROLES, in auth.ROLES order; no rpc without, none missing."""
    comments = _method_comments(proto_file)
    assert set(comments) == set(auth.RPC_ROLES)
    wrong = {}
    for method, comment in comments.items():
        said = re.findall(r"^ ?Roles: (.*)$", comment, re.MULTILINE)
        expected = ", ".join(r for r in auth.ROLES if r in auth.RPC_ROLES[method]) + "."
        if said != [expected]:
            wrong[method] = (said, expected)
    assert not wrong, wrong


def test_the_proto_states_the_token_rule_and_every_role(proto_file):
    syntax = next(  # the syntax statement holds the file's opening comment
        loc for loc in proto_file.source_code_info.location if tuple(loc.path) == (12,)
    )
    text = " ".join(" ".join([*syntax.leading_detached_comments, syntax.leading_comments]).split())
    assert "`authorization: Bearer <token>`" in text
    for role in auth.ROLES:
        assert role in text, role
    # message_type = 4, DescriptorProto.field = 2: CreateTokenRequest.role
    create = [m.name for m in proto_file.message_type].index("CreateTokenRequest")
    role_field = next(
        loc.trailing_comments
        for loc in proto_file.source_code_info.location
        if tuple(loc.path) == (4, create, 2, 0)
    )
    assert role_field.strip() == " | ".join(auth.ROLES), role_field
