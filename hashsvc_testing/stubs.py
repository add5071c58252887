"""The client stubs of every hashsvc service on one channel."""

from __future__ import annotations

import grpc

from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.matcher = pb_grpc.MatcherStub(channel)
        self.curation = pb_grpc.CurationStub(channel)
        self.audit = pb_grpc.AuditStub(channel)
        self.admin = pb_grpc.AdminStub(channel)
        self.review = pb_grpc.ReviewStub(channel)
        self.events = pb_grpc.EventsStub(channel)
        self.retro = pb_grpc.RetroStub(channel)
        self.exchange = pb_grpc.ExchangeStub(channel)
        self.channel = channel
