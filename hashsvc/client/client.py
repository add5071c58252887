"""A small gRPC client for the CLI and for scripts: channel, token, stubs."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import grpc

from hashsvc.base.addresses import is_loopback
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
# Media up to this size goes in one message (Match, AddEntry); larger media is
# streamed in chunks (MatchUpload, AddEntryUpload) and never read whole.
STREAM_ABOVE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# Streamed uploads one client has open at once; the others wait here. The
# server refuses a token's streams past max_streams_per_token and
# max_uploads_per_token (default 4 each) with RESOURCE_EXHAUSTED.
UPLOADS_IN_FLIGHT = 4


def streamed(size: int) -> bool:
    """Whether media of this many bytes is sent as a stream of chunks."""
    return size > STREAM_ABOVE_BYTES


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def bytes_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


class InsecureTransport(ValueError):
    """The client would send a token in clear beyond this machine, or was
    given half a TLS configuration."""


class _TokenAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context, callback) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


class Client:
    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        tls_ca_file: str | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        """insecure: send the token in plaintext to a server that is not on
        loopback (refused otherwise, before any connection is made)."""
        self.server = server or os.environ.get("HASHSVC_SERVER") or DEFAULT_SERVER
        self.token = token if token is not None else os.environ.get("HASHSVC_TOKEN", "")
        tls_ca_file = tls_ca_file or os.environ.get("HASHSVC_TLS_CA")
        # mutual TLS: this client's own certificate and key
        tls_cert_file = tls_cert_file or os.environ.get("HASHSVC_TLS_CERT")
        tls_key_file = tls_key_file or os.environ.get("HASHSVC_TLS_KEY")
        if (tls_cert_file or tls_key_file) and not (tls_ca_file and tls_cert_file and tls_key_file):
            # a client certificate without a CA (or half of one) was ignored,
            # and the client spoke plaintext
            raise InsecureTransport(
                "mutual TLS needs a CA (--tls-ca / HASHSVC_TLS_CA) and both HASHSVC_TLS_CERT "
                "and HASHSVC_TLS_KEY"
            )
        if not tls_ca_file and self.token and not insecure and not is_loopback(self.server):
            raise InsecureTransport(
                f"refusing to send the token in clear to {self.server}, which is not on this "
                "machine: connect with TLS (--tls-ca FILE or HASHSVC_TLS_CA), or pass "
                "--insecure if the network is trusted"
            )
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls_ca_file:
            with open(tls_ca_file, "rb") as f:
                root = f.read()
            key = cert = None
            if tls_cert_file and tls_key_file:
                with open(tls_key_file, "rb") as f:
                    key = f.read()
                with open(tls_cert_file, "rb") as f:
                    cert = f.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=cert
            )
            if self.token:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.metadata_call_credentials(_TokenAuth(self.token))
                )
            self.channel = grpc.secure_channel(self.server, creds, options)
            self._metadata: tuple = ()
        else:
            self.channel = grpc.insecure_channel(self.server, options)
            self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        self.matcher = pb_grpc.MatcherStub(self.channel)
        self.curation = pb_grpc.CurationStub(self.channel)
        self.audit = pb_grpc.AuditStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)
        self.review = pb_grpc.ReviewStub(self.channel)
        self.events = pb_grpc.EventsStub(self.channel)
        self.retro = pb_grpc.RetroStub(self.channel)
        self.exchange = pb_grpc.ExchangeStub(self.channel)
        self._uploads = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)

    @property
    def metadata(self) -> tuple:
        """Pass as metadata= on every call (empty over TLS, where the call
        credentials carry the token)."""
        return self._metadata

    def match_upload(self, header: pb.MatchRequest, chunks: Iterator[bytes]) -> pb.MatchResponse:
        """Match media sent as a stream of chunks (any size up to the server's
        max_upload_bytes); header holds client_ref and sets, no media."""
        messages = (pb.MatchUploadRequest(chunk=c) for c in chunks)
        with self._uploads:
            return self.matcher.MatchUpload(
                _prepend(pb.MatchUploadRequest(header=header), messages), metadata=self.metadata
            )

    def add_entry_upload(self, header: pb.AddEntryRequest, chunks: Iterator[bytes]) -> pb.Entry:
        messages = (pb.AddEntryUploadRequest(chunk=c) for c in chunks)
        with self._uploads:
            return self.curation.AddEntryUpload(
                _prepend(pb.AddEntryUploadRequest(header=header), messages), metadata=self.metadata
            )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prepend(first, rest):
    yield first
    yield from rest
