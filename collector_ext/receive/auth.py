"""Who may submit records: bearer tokens from files, and an allow-list of client certificates.

Both receivers call ``Authenticator.authenticate`` with what the transport gives them (the raw
``authorization`` header or metadata value, the verified client certificate, the peer address) before
they read a request body, and seal the ``Sender`` it returns with every record of the request.

- Tokens live in files, one token per file, each under a name; the name is what the seal records,
  never the token. Several may be valid at once (rotation). A file is looked at again when it changes
  (checked at most once per ``check_interval`` seconds, on the next request), so a rotated token takes
  effect without a restart. Presented tokens are compared in constant time over SHA-256 digests.
- A client certificate has already been verified against the client CA by the TLS layer; the
  allow-list then names which verified clients may submit: by exact RFC 4514 subject or by a subject
  alternative name (DNS, URI such as a SPIFFE id, IP, email).

This module does not terminate TLS or speak HTTP or gRPC: the receivers map ``AuthenticationError``
to 401/UNAUTHENTICATED and ``ClientNotAllowedError`` to 403/PERMISSION_DENIED. It logs what an
operator must see: token files re-read or refused, and each refused request (a fixed message with
the receiver, the reason and the peer, never a token), which the log's repeat limiter
(``logging_setup.RepeatLimiter``) holds to a few lines a minute however fast a client keeps failing.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from collector_ext.errors import CollectorExtError, ConfigurationError
from collector_ext.seal.sender import MAX_NAME_BYTES, Sender

log = logging.getLogger(__name__)

# A shorter token can be guessed; 16 printable characters is the floor, 32 random bytes hex-encoded
# (`openssl rand -hex 32`) the suggestion.
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
SAN_KINDS = ("DNS", "URI", "IP", "email")
_BEARER = "bearer"
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")


# Why a request was refused: the ``reason`` of AuthenticationError, a label of the metric
# collector_ext_auth_failures_total.
AUTH_FAILURE_REASONS = (
    "missing_token",
    "not_bearer",
    "invalid_token",
    "certificate_required",
    "client_not_allowed",
    "bad_certificate",
    "unrecordable_sender",
)


class AuthenticationError(CollectorExtError):
    """A request that did not authenticate. ``str()`` is safe to answer and to log: it never holds a
    token or any part of one. ``reason`` is one of AUTH_FAILURE_REASONS."""

    def __init__(self, message: str, reason: str = "bad_certificate") -> None:
        super().__init__(message)
        self.reason = reason


class ClientNotAllowedError(AuthenticationError):
    """A verified client certificate that is not on the allow-list (403 / PERMISSION_DENIED)."""

    def __init__(self, message: str, reason: str = "client_not_allowed") -> None:
        super().__init__(message, reason)


# --- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The facts about a client certificate the allow-list and the seal use."""

    subject: str
    sans: tuple[str, ...]
    sha256: bytes


def _san_strings(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    names = extension.value
    assert isinstance(names, x509.SubjectAlternativeName)
    sans = [f"DNS:{name}" for name in names.get_values_for_type(x509.DNSName)]
    sans += [f"URI:{name}" for name in names.get_values_for_type(x509.UniformResourceIdentifier)]
    sans += [f"IP:{address}" for address in names.get_values_for_type(x509.IPAddress)]
    sans += [f"email:{name}" for name in names.get_values_for_type(x509.RFC822Name)]
    return tuple(sans)


@functools.lru_cache(maxsize=256)
def certificate_from_der(der: bytes) -> PeerCertificate:
    """Subject, SANs and digest of a DER certificate (cached: clients present the same one repeatedly).

    Raises:
        AuthenticationError: the bytes are not a certificate.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        subject = certificate.subject.rfc4514_string()
        sans = _san_strings(certificate)
    except ValueError as exc:
        raise AuthenticationError("the client certificate cannot be parsed") from exc
    return PeerCertificate(subject=subject, sans=sans, sha256=hashlib.sha256(der).digest())


def certificate_from_pem(pem: bytes) -> PeerCertificate:
    """As ``certificate_from_der``, for one PEM certificate (what gRPC's auth context holds)."""
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    except ValueError as exc:
        raise AuthenticationError("the client certificate cannot be parsed") from exc
    return certificate_from_der(der)


def certificate_from_grpc(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The verified client certificate of a gRPC call (``context.auth_context()``), or None."""
    for pem in auth_context.get("x509_pem_cert", ()):
        return certificate_from_pem(pem)
    return None


class _PeerCertSource(Protocol):
    def getpeercert(self, binary_form: bool = ...) -> object: ...


def certificate_from_ssl_object(ssl_object: _PeerCertSource | None) -> PeerCertificate | None:
    """The verified client certificate of a TLS connection (an ``ssl.SSLObject`` from
    ``transport.get_extra_info("ssl_object")``), or None without TLS or without a client certificate."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not isinstance(der, bytes) or not der:
        return None
    return certificate_from_der(der)


def grpc_peer(peer: str) -> str:
    """``context.peer()`` (``ipv4:127.0.0.1:53422``, ``ipv6:%5B::1%5D:53422``) as ``HOST:PORT``."""
    kind, sep, address = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    return address.replace("%5B", "[").replace("%5D", "]")


def format_peer(peername: object) -> str:
    """A socket's ``peername`` (``transport.get_extra_info("peername")``) as ``HOST:PORT``, IPv6 in
    brackets; "" when the transport does not know it."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = str(peername[0]), peername[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(peername, str):
        return peername
    return ""


# --- the allow-list -------------------------------------------------------------------------------


def normalize_allowed_client(entry: str) -> str:
    """The canonical form of an allow-list entry; the same function reads certificates' names.

    An entry is ``subject:<RFC 4514 name>`` (compared after parsing, so spacing and escaping do not
    matter), ``DNS:<name>`` (case-insensitive), ``URI:<uri>`` (exact, e.g. a SPIFFE id
    ``URI:spiffe://example.org/ns/apps/sa/collector``), ``IP:<address>`` or ``email:<address>``.

    Raises:
        ValueError: an entry of another kind, or one that does not parse (the message says which).
    """
    kind, sep, value = entry.partition(":")
    value = value.strip()
    if not sep or not value:
        raise ValueError(
            f"{entry!r} is not an allow-list entry: write subject:<RFC 4514 name>, DNS:<name>, URI:<uri>, "
            "IP:<address> or email:<address>"
        )
    if kind == "subject":
        try:
            # Spaces around the separating commas, as people copy them from `openssl x509 -subject`,
            # are not part of any value.
            parts = (part.strip() for part in _UNESCAPED_COMMA.split(value))
            return "subject:" + x509.Name.from_rfc4514_string(",".join(parts)).rfc4514_string()
        except ValueError as exc:
            raise ValueError(f"{entry!r}: the subject is not an RFC 4514 name (e.g. CN=collector,O=Example)") from exc
    if kind == "DNS":
        return "DNS:" + value.lower()
    if kind == "IP":
        try:
            return "IP:" + str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ValueError(f"{entry!r}: not an IP address") from exc
    if kind in ("URI", "email"):
        return f"{kind}:{value}"
    raise ValueError(f"{entry!r}: the kind must be one of subject, {', '.join(SAN_KINDS)}")


def _certificate_names(certificate: PeerCertificate) -> set[str]:
    names = {"subject:" + certificate.subject}
    for san in certificate.sans:
        try:
            names.add(normalize_allowed_client(san))
        except ValueError:
            continue
    return names


def client_allowed(allowed: frozenset[str], certificate: PeerCertificate) -> bool:
    """Whether a certificate's subject or one of its SANs is on a normalized allow-list."""
    return not allowed.isdisjoint(_certificate_names(certificate))


# --- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenFile:
    """A configured token: the name sealed with each record, and the file holding the token."""

    name: str
    path: Path


@dataclass(frozen=True, slots=True)
class _Token:
    name: str
    digest: bytes


def check_token_text(text: str) -> str:
    """The token in a token file's text (surrounding whitespace removed).

    Raises:
        ValueError: empty, too short, too long, or holding characters an HTTP header cannot carry.
    """
    token = text.strip()
    if not token:
        raise ValueError("is empty")
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"holds a token of {len(token)} characters; use {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} "
            "(e.g. `openssl rand -hex 32`)"
        )
    if not all("!" <= char <= "~" for char in token):
        raise ValueError("holds a token with spaces or non-ASCII characters; a header can carry only printable ASCII")
    return token


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def match_token(tokens: Sequence[_Token], presented: str) -> str | None:
    """The name of the token equal to ``presented``, comparing SHA-256 digests in constant time.

    Every configured token is compared, whatever matched, so the time taken does not say which one did.
    """
    digest = token_digest(presented)
    found: str | None = None
    for token in tokens:
        if hmac.compare_digest(digest, token.digest):
            found = token.name
    return found


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive, RFC 6750).

    Raises:
        AuthenticationError: no value, another scheme, or no token.
    """
    if authorization is None or not authorization.strip():
        raise AuthenticationError(
            "a bearer token is required: send the header 'authorization: Bearer <token>'", "missing_token"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != _BEARER:
        raise AuthenticationError("the authorization header must use the Bearer scheme: 'Bearer <token>'", "not_bearer")
    token = token.strip()
    if not token:
        raise AuthenticationError("the authorization header holds no token after 'Bearer'", "missing_token")
    return token


def _read_token_file(path: Path, setting: str) -> tuple[str, tuple[int, int, int]]:
    """The token of a file and its (inode, size, mtime) identity.

    Raises:
        ConfigurationError: unreadable, readable by group or others, or not a valid token.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError(setting, f"{path} is not a regular file")
            if info.st_mode & 0o077:
                raise ConfigurationError(
                    setting,
                    f"{path} is readable or writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"restrict it: chmod 600 {path}",
                )
            data = handle.read(MAX_TOKEN_CHARS + 64)
    except OSError as exc:
        raise ConfigurationError(setting, f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(setting, f"{path} is not UTF-8 text") from exc
    try:
        token = check_token_text(text)
    except ValueError as exc:
        raise ConfigurationError(setting, f"{path} {exc}") from exc
    return token, (info.st_ino, info.st_size, info.st_mtime_ns)


class TokenStore:
    """The configured tokens, re-read from their files when the files change.

    Files are read at construction (a bad one stops start-up). Afterwards, on ``current()``, each
    file is stat()ed at most once per ``check_interval`` seconds; a changed file is read again. A
    file that has become unreadable or invalid keeps its previous token (and is logged), because
    refusing every client of that name would drop their data: the collector does not retry
    UNAUTHENTICATED.
    """

    def __init__(
        self,
        files: Sequence[TokenFile],
        *,
        setting: str = "auth.tokens",
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [entry.name for entry in files]
        if len(set(names)) != len(names):
            raise ConfigurationError(setting, "each token name may be listed once")
        self._files = tuple(files)
        self._setting = setting
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._identities: list[tuple[int, int, int] | None] = []
        tokens: list[_Token] = []
        for index, entry in enumerate(self._files):
            token, identity = _read_token_file(entry.path, f"{setting}[{index}].file")
            tokens.append(_Token(entry.name, token_digest(token)))
            self._identities.append(identity)
        self._tokens = tuple(tokens)
        self._refuse_duplicates(self._tokens)
        self._next_check = clock() + check_interval

    def _refuse_duplicates(self, tokens: Sequence[_Token]) -> None:
        digests = [token.digest for token in tokens]
        if len(set(digests)) != len(digests):
            raise ConfigurationError(self._setting, "two token files hold the same token; give each name its own")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self._files)

    def current(self) -> tuple[_Token, ...]:
        now = self._clock()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + self._check_interval
                self._reload_changed()
            finally:
                self._lock.release()
        return self._tokens

    def _reload_changed(self) -> None:
        tokens = list(self._tokens)
        for index, entry in enumerate(self._files):
            try:
                info = entry.path.stat()
            except OSError as exc:
                self._keep(index, entry, f"cannot stat it: {exc.strerror}")
                continue
            if (info.st_ino, info.st_size, info.st_mtime_ns) == self._identities[index]:
                continue
            try:
                token, identity = _read_token_file(entry.path, f"{self._setting}[{index}].file")
            except ConfigurationError as exc:
                self._keep(index, entry, exc.problem)
                continue
            self._identities[index] = identity
            tokens[index] = _Token(entry.name, token_digest(token))
            log.info("token file re-read", extra={"token_name": entry.name, "file": str(entry.path)})
        try:
            self._refuse_duplicates(tokens)
        except ConfigurationError:
            log.warning("token files re-read hold the same token twice; keeping the previous tokens")
            return
        self._tokens = tuple(tokens)

    def _keep(self, index: int, entry: TokenFile, problem: str) -> None:
        if self._identities[index] is None:
            return
        # Logged once per change, not on every check.
        self._identities[index] = None
        log.warning(
            "token file changed but cannot be used; its previous token stays valid",
            extra={"token_name": entry.name, "file": str(entry.path), "problem": problem},
        )


# --- the authenticator ----------------------------------------------------------------------------


class Authenticator:
    """Decides whether a request may be sealed, and says who sent it.

    With no tokens, the token is not asked for; with no allow-list, any client certificate the TLS
    layer verified is accepted. Either way the returned ``Sender`` names the peer and, when there is
    one, the certificate.
    """

    def __init__(
        self,
        tokens: TokenStore | None = None,
        allowed_clients: Iterable[str] = (),
        *,
        receiver: str = "otlp",
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        """``on_failure(receiver, reason)`` is told of every refused request (the metrics count them)."""
        self._tokens = tokens if tokens is not None and tokens.names else None
        self._allowed = frozenset(normalize_allowed_client(entry) for entry in allowed_clients)
        self._receiver = receiver
        self._on_failure = on_failure

    def for_receiver(self, receiver: str, on_failure: Callable[[str, str], None] | None = None) -> Authenticator:
        """The same tokens and allow-list (one TokenStore, read once), reporting failures as ``receiver``."""
        view = copy.copy(self)
        view._receiver = receiver
        view._on_failure = on_failure
        return view

    @classmethod
    def from_files(
        cls,
        tokens: Sequence[TokenFile] = (),
        allowed_clients: Iterable[str] = (),
        *,
        setting: str = "auth.tokens",
    ) -> Authenticator:
        """Read the token files now (a bad one raises ConfigurationError naming it)."""
        return cls(TokenStore(tokens, setting=setting) if tokens else None, allowed_clients)

    @property
    def requires_token(self) -> bool:
        return self._tokens is not None

    @property
    def requires_allowed_certificate(self) -> bool:
        return bool(self._allowed)

    def describe(self) -> str:
        """The effective settings in one phrase, for the start-up log line (names only)."""
        parts = []
        if self._tokens is not None:
            parts.append(f"bearer tokens {', '.join(self._tokens.names)}")
        if self._allowed:
            parts.append(f"{len(self._allowed)} allowed client certificate names")
        return "; ".join(parts) or "none"

    def authenticate(self, *, authorization: str | None, certificate: PeerCertificate | None, peer: str) -> Sender:
        """The Sender of a request, or an error saying why it may not submit (logged and reported to
        ``on_failure`` with its reason).

        Raises:
            ClientNotAllowedError: a certificate that is not on the allow-list.
            AuthenticationError: no certificate while an allow-list is set; a missing, malformed
                or unknown bearer token while tokens are configured.
        """
        try:
            return self._check(authorization, certificate, peer)
        except AuthenticationError as exc:
            self._refused(exc.reason, peer)
            raise

    def _refused(self, reason: str, peer: str) -> None:
        if self._on_failure is not None:
            self._on_failure(self._receiver, reason)
        # One message template for every refusal, so the repeat limiter counts them as one kind.
        log.warning(
            "request refused: authentication failed",
            extra={"receiver": self._receiver, "reason": reason, "peer": peer[:64]},
        )

    def _check(self, authorization: str | None, certificate: PeerCertificate | None, peer: str) -> Sender:
        if self._allowed:
            if certificate is None:
                raise AuthenticationError(
                    "a client certificate is required (TLS with a certificate from the client CA)",
                    "certificate_required",
                )
            if not client_allowed(self._allowed, certificate):
                raise ClientNotAllowedError(
                    f"the client certificate {certificate.subject[:256]!r} is not on the allow-list"
                )
        token_name: str | None = None
        if self._tokens is not None:
            presented = bearer_token(authorization)
            if len(presented) > MAX_TOKEN_CHARS:
                raise AuthenticationError("the bearer token is not valid", "invalid_token")
            token_name = match_token(self._tokens.current(), presented)
            if token_name is None:
                raise AuthenticationError("the bearer token is not valid", "invalid_token")
        try:
            return Sender(
                peer=peer,
                token_name=token_name,
                certificate_subject=certificate.subject if certificate is not None else None,
                certificate_sha256=certificate.sha256 if certificate is not None else b"",
            )
        except ValueError as exc:  # a subject or address beyond what a Sender may hold (FORMAT.md 7.3a)
            raise AuthenticationError(
                f"the client cannot be recorded as a sender: {exc}", "unrecordable_sender"
            ) from exc


def valid_token_name(name: str) -> str:
    """A token name for configuration: 1 to 256 bytes of printable text (it is sealed and shown).

    Raises:
        ValueError: empty, too long, or holding control characters.
    """
    if not name.strip() or len(name.encode()) > MAX_NAME_BYTES or not name.isprintable():
        raise ValueError(f"a token name is 1 to {MAX_NAME_BYTES} bytes of printable text, e.g. 'collector-prod'")
    return name
