"""TLS by configuration: a generated certificate, a client that trusts it, and a
plaintext client that is refused."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from hashsvc.client.client import Client
from hashsvc.v1 import hashsvc_pb2 as pb


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


def test_tls_server_accepts_trusted_client_and_refuses_plaintext(certs, tmp_path, make_harness):
    h = make_harness(
        f"sqlite:///{tmp_path}/tls.db",
        tls_cert_file=str(certs / "cert.pem"),
        tls_key_file=str(certs / "key.pem"),
    )
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


def _signed_client_cert(d, ca_name: str, name: str):
    """A client certificate signed by the CA whose files are ca_name.{key,pem}."""
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
         "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca_name}.pem"),
         "-CAkey", str(d / f"{ca_name}.key"), "-CAcreateserial", "-days", "2",
         "-out", str(d / f"{name}.pem")],
        check=True, capture_output=True,
    )  # fmt: skip


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(
    certs, tmp_path, make_harness
):
    d = certs
    for ca in ("client-ca", "other-ca"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.pem"), "-subj", f"/CN={ca}"],
            check=True, capture_output=True,
        )  # fmt: skip
    _signed_client_cert(d, "client-ca", "pipeline")
    _signed_client_cert(d, "other-ca", "intruder")
    h = make_harness(
        f"sqlite:///{tmp_path}/mtls.db",
        tls_cert_file=str(d / "cert.pem"),
        tls_key_file=str(d / "key.pem"),
        tls_client_ca_file=str(d / "client-ca.pem"),
    )
    server = f"localhost:{h.running.port}"
    with Client(
        server=server,
        token=h.tokens["operator"],
        tls_ca_file=str(d / "cert.pem"),
        tls_cert_file=str(d / "pipeline.pem"),
        tls_key_file=str(d / "pipeline.key"),
    ) as client:
        sets = client.curation.ListSets(pb.ListSetsRequest(), metadata=client.metadata, timeout=10)
        assert list(sets.sets) == []
    for cert in (None, "intruder"):
        with Client(
            server=server,
            token=h.tokens["operator"],
            tls_ca_file=str(d / "cert.pem"),
            tls_cert_file=str(d / f"{cert}.pem") if cert else None,
            tls_key_file=str(d / f"{cert}.key") if cert else None,
        ) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.curation.ListSets(pb.ListSetsRequest(), metadata=client.metadata, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_http_api_uses_the_same_tls(certs, tmp_path, make_harness):
    """The HTTP API listens with the gRPC server's certificate and key: HTTPS
    works with the CA, plaintext HTTP does not."""
    import dataclasses
    import ssl

    import httpx

    from hashsvc.http.server import HttpServer

    h = make_harness(
        f"sqlite:///{tmp_path}/tls-http.db",
        tls_cert_file=str(certs / "cert.pem"),
        tls_key_file=str(certs / "key.pem"),
    )
    core = h.core
    core.config = dataclasses.replace(core.config, http_listen="127.0.0.1:0")
    server = HttpServer(core, h.running.limiter, h.running.spool).start()
    try:
        headers = {"Authorization": f"Bearer {h.tokens['operator']}"}
        trusted = ssl.create_default_context(cafile=str(certs / "cert.pem"))
        with httpx.Client(verify=trusted, headers=headers, timeout=10) as tls:
            assert tls.get(f"https://localhost:{server.port}/v1/sets").status_code == 200
        with httpx.Client(headers=headers, timeout=10) as plain, pytest.raises(httpx.HTTPError):
            plain.get(f"http://127.0.0.1:{server.port}/v1/sets")
    finally:
        server.stop()
