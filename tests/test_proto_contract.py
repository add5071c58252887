"""The proto is the contract for clients in other languages (issue 17): a
client written from protos/hashsvc/v1/hashsvc.proto alone must learn from it
who may call what. Its comments are read as protoc parses them (source info
kept), not by pattern-matching the text. Server reflection answers both of
its protocol versions."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

from hashsvc.core import auth
from tests.helpers import start_harness

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


# grpc.reflection.v1 as grpc-proto publishes it (grpc/reflection/v1/reflection.proto,
# comments left out): the client below is built from this, not from the server's code.
REFLECTION_V1 = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest {
  string containing_type = 1;
  int32 extension_number = 2;
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse {
  string base_type_name = 1;
  repeated int32 extension_number = 2;
}
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse {
  int32 error_code = 1;
  string error_message = 2;
}
"""


def _reflection_v1(tmp_path) -> tuple[descriptor_pb2.FileDescriptorProto, dict]:
    """The v1 file as protoc compiles it, and its message classes (a pool of
    their own, apart from the server's)."""
    (tmp_path / "grpc/reflection/v1").mkdir(parents=True)
    (tmp_path / "grpc/reflection/v1/reflection.proto").write_text(REFLECTION_V1)
    out = tmp_path / "v1.pb"
    assert (
        protoc.main(
            [
                "protoc",
                f"-I{tmp_path}",
                f"--descriptor_set_out={out}",
                str(tmp_path / "grpc/reflection/v1/reflection.proto"),
            ]
        )
        == 0
    )
    file = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    classes = message_factory.GetMessages([file], pool=pool)
    return file, {name.rsplit(".", 1)[-1]: cls for name, cls in classes.items()}


def _fields(message: descriptor_pb2.DescriptorProto) -> list[tuple]:
    return [(f.name, f.number, f.type, f.label, f.type_name) for f in message.field]


def test_reflection_answers_v1_as_well_as_v1alpha(tmp_path):
    """grpcurl and current reflection clients ask grpc.reflection.v1 first;
    grpcio-reflection serves only v1alpha."""
    official, v1 = _reflection_v1(tmp_path)
    request, response = v1["ServerReflectionRequest"], v1["ServerReflectionResponse"]
    path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

    def ask(channel, *requests):
        call = channel.stream_stream(path, request.SerializeToString, response.FromString)
        return list(call(iter(requests), timeout=10))

    h = start_harness(f"sqlite:///{tmp_path}/off.db")
    try:  # off by default, as v1alpha
        channel = grpc.insecure_channel(h.address)
        h.channels.append(channel)
        with pytest.raises(grpc.RpcError) as err:
            ask(channel, request(list_services=""))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        h.close()
    h = start_harness(f"sqlite:///{tmp_path}/on.db", reflection=True)
    try:
        channel = grpc.insecure_channel(h.address)  # no token: reflection is public
        h.channels.append(channel)
        listed, matcher, itself = ask(
            channel,
            request(list_services=""),
            request(file_containing_symbol="hashsvc.v1.Matcher"),
            request(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        )
        names = {s.name for s in listed.list_services_response.service}
        assert {
            "hashsvc.v1.Matcher",
            "hashsvc.v1.Curation",
            "hashsvc.v1.Events",
            "hashsvc.v1.Review",
            "hashsvc.v1.Audit",
            "hashsvc.v1.Admin",
            "hashsvc.v1.Retro",
            "hashsvc.v1.Exchange",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } == names
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in matcher.file_descriptor_response.file_descriptor_proto
        ]
        api = next(f for f in files if f.name == PROTO)
        assert "Match" in {m.name for s in api.service if s.name == "Matcher" for m in s.method}
        # the v1 service the server lists can be described, as protoc reads the official file
        served = descriptor_pb2.FileDescriptorProto.FromString(
            itself.file_descriptor_response.file_descriptor_proto[0]
        )
        assert served.package == official.package == "grpc.reflection.v1"
        assert {m.name: _fields(m) for m in served.message_type} == {
            m.name: _fields(m) for m in official.message_type
        }
        assert [
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in served.service[0].method
        ] == [
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in official.service[0].method
        ]
    finally:
        h.close()
