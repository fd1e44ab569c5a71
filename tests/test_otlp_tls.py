"""OTLP over TLS: the ``…_CERTIFICATE`` / ``…_CLIENT_CERTIFICATE`` / ``…_CLIENT_KEY`` files
against real HTTPS and gRPC receivers that require a client certificate (certificates
from trustme), and broken files refused at start-up with the variable named."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from proxy.otlp import OtlpSettings
from proxy.otlp_grpc import OtlpGrpcSender
from proxy.otlp_http import OtlpHttpSender
from proxy.tracing import Export
from tests.processes import serving
from tests.test_otlp_senders import GrpcReceiver, Receiver, _payload

PROTOCOLS = ("http/protobuf", "grpc")


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1")
        self.client = self.ca.issue_cert("app.example")
        self.ca_file = root / "ca.pem"
        self.client_cert = root / "client.pem"
        self.client_key = root / "client.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        self.client.private_key_pem.write_to_path(str(self.client_key))

    def environ(self, endpoint: str, client: bool = True) -> dict[str, str]:
        out = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(self.ca_file)}
        if client:
            out["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = str(self.client_cert)
            out["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = str(self.client_key)
        return out


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def https_receiving(receiver: Receiver, pki: Pki) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server.configure_cert(context)
    pki.ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the exporter must show its certificate
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.handle)
    async with serving(app, context) as url:
        yield url


async def grpcs_receiving(receiver: GrpcReceiver, pki: Pki) -> AsyncIterator[str]:
    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        Export = staticmethod(receiver.export)  # noqa: N815 - gRPC's name

    credentials = grpc.ssl_server_credentials(
        [(pki.server.private_key_pem.bytes(), pki.server.cert_chain_pems[0].bytes())],
        root_certificates=pki.ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_spans_reach_an_https_collector_that_requires_the_client_certificate(pki: Pki) -> None:
    receiver = Receiver()
    async for url in https_receiving(receiver, pki):
        sender = OtlpHttpSender(OtlpSettings.from_environ(pki.environ(url), "http/protobuf"))
        assert await asyncio.to_thread(sender.write, _payload("over", "tls"))
        sender.shutdown()
        unknown = {**pki.environ(url, client=False), "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"}
        anonymous = OtlpHttpSender(OtlpSettings.from_environ(unknown, "http/protobuf"))
        assert not await asyncio.to_thread(anonymous.write, _payload("refused"))  # no client certificate
        anonymous.shutdown()
    assert receiver.spans() == ["over", "tls"]


async def test_spans_reach_a_grpc_collector_over_mutual_tls(pki: Pki) -> None:
    receiver = GrpcReceiver()
    async for url in grpcs_receiving(receiver, pki):
        settings = OtlpSettings.from_environ(pki.environ(url), "grpc")
        assert not settings.insecure
        sender = OtlpGrpcSender(settings)
        assert await asyncio.to_thread(sender.write, _payload("over", "grpcs"))
        sender.shutdown()
    (_, request), *_ = receiver.requests
    assert [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans] == ["over", "grpcs"]


def _broken(pki: Pki, root: Path, kind: str) -> tuple[dict[str, str], str]:
    """An environment with one broken TLS file, and the variable the error must name."""
    environ = pki.environ("https://collector:4318")
    if kind == "ca_not_pem":
        (root / "junk.pem").write_text("not a certificate\n")
        environ["OTEL_EXPORTER_OTLP_CERTIFICATE"] = str(root / "junk.pem")
        return environ, "OTEL_EXPORTER_OTLP_CERTIFICATE"
    if kind == "key_of_another_certificate":
        other = pki.ca.issue_cert("other.example")
        other.private_key_pem.write_to_path(str(root / "other.key"))
        environ["OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"] = str(root / "other.key")
        return environ, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"
    assert kind == "encrypted_key"
    key = serialization.load_pem_private_key(pki.client.private_key_pem.bytes(), None)
    (root / "locked.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    environ["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = str(root / "locked.key")
    return environ, "OTEL_EXPORTER_OTLP_CLIENT_KEY"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["ca_not_pem", "key_of_another_certificate", "encrypted_key"])
def test_broken_tls_files_are_refused_with_the_variable_named(
    pki: Pki, tmp_path: Path, kind: str, protocol: str
) -> None:
    environ, variable = _broken(pki, tmp_path, kind)
    with pytest.raises(ValueError, match=variable) as raised:
        Export.from_environ({**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}, None, 1)
    assert "PEM" in str(raised.value)


def test_tls_files_are_not_read_for_a_plaintext_endpoint(pki: Pki, tmp_path: Path) -> None:
    """As in the SDK, the files only matter when the connection is TLS."""
    environ, _ = _broken(pki, tmp_path, "ca_not_pem")
    environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://collector:4318"
    for protocol in PROTOCOLS:
        export = Export.from_environ({**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}, None, 1)
        assert export.otlp is not None and export.otlp.certificate == environ["OTEL_EXPORTER_OTLP_CERTIFICATE"]


async def test_the_proxy_exits_2_naming_a_broken_certificate(pki: Pki, tmp_path: Path) -> None:
    environ, variable = _broken(pki, tmp_path, "ca_not_pem")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "OTEL_"))} | environ
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flywheel.cli", "proxy", "--upstream", "http://127.0.0.1:9/v1",
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert variable in err.decode() and "Traceback" not in err.decode()
