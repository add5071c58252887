"""Server reflection under both of its names: grpc.reflection.v1, which current
tools (grpcurl, Postman, grpc-js's reflection clients) ask for first, and the
older v1alpha. grpcio-reflection 1.85 serves v1alpha only. The two protocols
are the same messages under another package, field for field
(grpc/reflection/v1/reflection.proto is v1alpha's file renamed), so one
servicer answers both: v1 calls are read and written with v1alpha's message
classes, and v1's descriptor (v1alpha's, renamed) is added to the pool, so a
client can describe the v1 service it found in the list as well."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable(service_names: list[str], server: grpc.Server, pool=None) -> None:
    """Serves reflection on `server` for service_names and both reflection services."""
    pool = pool or descriptor_pool.Default()
    add_v1_descriptor(pool)
    servicer = reflection.ReflectionServicer(
        [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME], pool=pool
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )


def add_v1_descriptor(pool) -> None:
    """grpc.reflection.v1's file in `pool`, made from v1alpha's (once; a pool
    that has it already, from a later grpcio-reflection, keeps its own)."""
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    alpha = reflection_pb2.DESCRIPTOR
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.ClearField("options")  # v1alpha's language packages

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{alpha.package}.", f".{V1_PACKAGE}.", 1)

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())
