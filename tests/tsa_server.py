"""A small RFC 3161 time-stamping authority for tests: `openssl ts -reply` behind a loopback HTTP server.

``LocalTsa(directory)`` makes a CA and a TSA certificate (critical extendedKeyUsage timeStamping, as
`openssl ts` requires), writes an OpenSSL ``[tsa]`` configuration, and answers
``POST /`` (``application/timestamp-query``) on 127.0.0.1 with a free port by running
``openssl ts -reply`` on the request. ``failing = True`` makes it answer 503, for outages.

The chain is given to verifiers as a PEM bundle (``bundle``: the TSA certificate, then the CA) and
left out of the replies: with ``certs`` set, OpenSSL 3.0 writes a certificate SET out of DER order
that rfc3161-client refuses.
"""

from __future__ import annotations

import datetime
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tsa_certificates(directory: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """(ca.crt, tsa.crt, tsa.key, bundle.pem) for a TSA called ``name``."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{name} CA"))
        .issuer_name(_name(f"{name} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    tsa = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.crt", directory / "tsa.crt", directory / "tsa.key", directory / "bundle.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(tsa.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(tsa_key))
    paths[2].chmod(0o600)
    paths[3].write_bytes(paths[1].read_bytes() + paths[0].read_bytes())
    return paths


_CONFIG = """\
oid_section = tsa_oids
[ tsa_oids ]
tsa_policy1 = 1.3.6.1.4.1.99999.1
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
serial = {serial}
signer_cert = {cert}
signer_key = {key}
signer_digest = sha256
default_policy = tsa_policy1
digests = sha256, sha384, sha512
accuracy = secs:1
ess_cert_id_alg = sha256
"""


class LocalTsa:
    """`openssl ts -reply` on 127.0.0.1; a context manager that starts and stops its HTTP server."""

    def __init__(self, directory: Path, name: str = "collector-ext test TSA") -> None:
        self.directory = directory
        self.ca, self.certificate, self.key, self.bundle = make_tsa_certificates(directory, name)
        serial = directory / "serial"
        serial.write_text("01\n")
        self.config = directory / "tsa.cnf"
        self.config.write_text(_CONFIG.format(serial=serial, cert=self.certificate, key=self.key))
        self.failing = False
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def reply(self, query: bytes) -> bytes:
        """The DER reply `openssl ts -reply` gives to ``query`` (serialised: it bumps its serial file)."""
        with self._lock, tempfile.TemporaryDirectory(dir=self.directory) as work:
            query_path, reply_path = Path(work) / "q.tsq", Path(work) / "r.tsr"
            query_path.write_bytes(query)
            subprocess.run(
                [
                    "openssl",
                    "ts",
                    "-reply",
                    "-config",
                    str(self.config),
                    "-queryfile",
                    str(query_path),
                    "-out",
                    str(reply_path),
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            return reply_path.read_bytes()

    def __enter__(self) -> LocalTsa:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                tsa.requests += 1
                length = int(self.headers.get("Content-Length", "0"))
                query = self.rfile.read(length)
                if tsa.failing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_response(415)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    body = tsa.reply(query)
                except subprocess.CalledProcessError:
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-tsa", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
