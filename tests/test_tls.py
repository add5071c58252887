"""TLS by configuration: a generated certificate, a client that trusts it, and a
plaintext client that is refused."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from hashsvc.client import Client
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.helpers import start_harness


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return d


def test_tls_server_accepts_trusted_client_and_refuses_plaintext(certs, tmp_path):
    h = start_harness(
        f"sqlite:///{tmp_path}/tls.db",
        tls_cert_file=str(certs / "cert.pem"),
        tls_key_file=str(certs / "key.pem"),
    )
    try:
        with Client(
            server=f"localhost:{h.running.port}",
            token=h.tokens["operator"],
            tls_ca_file=str(certs / "cert.pem"),
        ) as client:
            created = client.curation.CreateSet(
                pb.CreateSetRequest(name="over-tls"), metadata=client.metadata, timeout=10
            )
            assert created.name == "over-tls"
        with Client(server=f"localhost:{h.running.port}", token=h.tokens["operator"]) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.curation.ListSets(pb.ListSetsRequest(), metadata=plain.metadata, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        h.close()
