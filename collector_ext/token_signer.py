"""An Ed25519 signing key held in a PKCS#11 token (an HSM, a cloud HSM's PKCS#11 library, SoftHSM2).

``TokenSigner`` is a ``Signer`` whose private key never leaves the token: each signature is one
``C_Sign`` call with the CKM_EDDSA mechanism (pure Ed25519, as FORMAT.md 2 requires). It opens one
logged-in session; calls are serialised on it, because python-pkcs11 crashed (a segmentation fault)
when two threads signed on two sessions of one token at once. Parallel signing through the token
uses worker processes, each with its own session (``signing_pool``).

The PIN is given as a value read by the composition root from a file; it is never logged, and error
messages name the settings (``signing_token.*``), not their secret values.

This module does not decide what a token key signs: in ``run_key`` mode the sealing pipeline has it
sign only chain-level statements (genesis, restart marks, run key certifications, checkpoints) and
signs records with an in-memory per-run key (FORMAT.md 7.7).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from collector_ext.errors import CollectorExtError, ConfigurationError
from collector_ext.seal.keys import PublicKey

ED25519_PUBLIC_KEY_SIZE = 32
# DER OCTET STRING header of a 32-byte value: what most tokens return as CKA_EC_POINT for Ed25519.
_OCTET_STRING_32 = b"\x04\x20"
_PROBE_MESSAGE = b"collector-ext token self-test"
ED25519_OID = "1.3.101.112"  # id-Ed25519, RFC 8410


class SigningTokenError(CollectorExtError):
    """The token failed to sign (removed, logged out, out of sessions): the seal cannot be made."""


@dataclass(frozen=True)
class TokenSettings:
    """Where the key is: the PKCS#11 module, the token's label, the key's label, and the user PIN."""

    module: str
    token_label: str
    key_label: str
    pin: str = field(repr=False)


def ed25519_point(ec_point: bytes) -> bytes:
    """The raw 32-byte public key from a token's CKA_EC_POINT of an Ed25519 key.

    PKCS#11 3.0 says the attribute is the DER OCTET STRING around the 32 bytes; some tokens store
    the 32 bytes bare. Both are accepted.

    Raises:
        ValueError: the value is neither form.
    """
    if len(ec_point) == ED25519_PUBLIC_KEY_SIZE + 2 and ec_point.startswith(_OCTET_STRING_32):
        return ec_point[2:]
    if len(ec_point) == ED25519_PUBLIC_KEY_SIZE:
        return ec_point
    raise ValueError(f"CKA_EC_POINT of {len(ec_point)} bytes is not an Ed25519 public key")


def _require_pkcs11() -> None:
    """python-pkcs11 is an optional extra: say how to install it rather than fail on an import."""
    try:
        import pkcs11  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError("signing_token", "needs python-pkcs11: pip install 'collector-ext[pkcs11]'") from exc


def open_session(token: Any, pin: str, *, rw: bool = False) -> Any:
    """A session on ``token`` logged in as its user. PKCS#11 logs in an application, not a session:
    when this process is logged in already (another session is open), the new session shares it."""
    from pkcs11 import exceptions as pkcs11_errors

    try:
        return token.open(rw=rw, user_pin=pin)
    except pkcs11_errors.UserAlreadyLoggedIn:
        return token.open(rw=rw)


class TokenSession:
    """One logged-in session on the token and the key found in it (not thread-safe by itself).

    Raises (constructor):
        ConfigurationError: the module, token, PIN or key is wrong; names the setting.
    """

    def __init__(self, settings: TokenSettings) -> None:
        _require_pkcs11()
        import pkcs11
        from pkcs11 import exceptions as pkcs11_errors

        try:
            library = pkcs11.lib(settings.module)
        except (RuntimeError, OSError, pkcs11_errors.PKCS11Error) as exc:
            raise ConfigurationError(
                "signing_token.module", f"cannot load the PKCS#11 module {settings.module}: {exc}"
            ) from exc
        try:
            token = library.get_token(token_label=settings.token_label)
        except pkcs11_errors.NoSuchToken as exc:
            raise ConfigurationError(
                "signing_token.token_label", f"no token labelled {settings.token_label!r} in {settings.module}"
            ) from exc
        except pkcs11_errors.MultipleTokensReturned as exc:
            raise ConfigurationError(
                "signing_token.token_label", f"more than one token labelled {settings.token_label!r}"
            ) from exc
        try:
            self._session: Any = open_session(token, settings.pin)
        except (pkcs11_errors.PinIncorrect, pkcs11_errors.PinInvalid, pkcs11_errors.PinLenRange) as exc:
            raise ConfigurationError(
                "signing_token.pin_file", f"the token {settings.token_label!r} refused the PIN (wrong PIN?)"
            ) from exc
        except pkcs11_errors.PinLocked as exc:
            raise ConfigurationError(
                "signing_token.pin_file", f"the PIN of token {settings.token_label!r} is locked"
            ) from exc
        except pkcs11_errors.PKCS11Error as exc:
            raise ConfigurationError(
                "signing_token", f"cannot open a session on token {settings.token_label!r}: {type(exc).__name__}"
            ) from exc
        try:
            self._private: Any = self._session.get_key(
                object_class=pkcs11.ObjectClass.PRIVATE_KEY,
                key_type=pkcs11.KeyType.EC_EDWARDS,
                label=settings.key_label,
            )
            public: Any = self._session.get_key(
                object_class=pkcs11.ObjectClass.PUBLIC_KEY,
                key_type=pkcs11.KeyType.EC_EDWARDS,
                label=settings.key_label,
            )
            raw = ed25519_point(bytes(public[pkcs11.Attribute.EC_POINT]))
        except pkcs11_errors.NoSuchKey as exc:
            self.close()
            raise ConfigurationError(
                "signing_token.key_label",
                f"token {settings.token_label!r} holds no Ed25519 private and public key labelled "
                f"{settings.key_label!r} (create them with `collector-ext keygen --token`)",
            ) from exc
        except pkcs11_errors.MultipleObjectsReturned as exc:
            self.close()
            raise ConfigurationError(
                "signing_token.key_label", f"more than one Ed25519 key labelled {settings.key_label!r}"
            ) from exc
        except (ValueError, pkcs11_errors.PKCS11Error) as exc:
            self.close()
            raise ConfigurationError("signing_token.key_label", f"unusable key {settings.key_label!r}: {exc}") from exc
        self.public_key = PublicKey.from_raw(raw)
        self._mechanism = pkcs11.Mechanism.EDDSA
        self._errors: tuple[type[BaseException], ...] = (pkcs11_errors.PKCS11Error,)

    def sign(self, message: bytes) -> bytes:
        """Pure Ed25519 over ``message``, made by the token.

        Raises:
            SigningTokenError: the token did not sign.
        """
        try:
            return bytes(self._private.sign(message, mechanism=self._mechanism))
        except self._errors as exc:
            raise SigningTokenError(f"the signing token failed to sign: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._session.close()


class TokenSigner:
    """A ``Signer`` backed by a PKCS#11 token; thread-safe (signatures are made one at a time).

    Raises (constructor):
        ConfigurationError: the token or key cannot be used, or the key's public and private halves
            do not belong together; names the setting.
    """

    def __init__(self, settings: TokenSettings) -> None:
        self._settings = settings
        self._session = TokenSession(settings)
        self._lock = threading.Lock()
        # A public key object that does not belong to the private key would make every seal fail
        # verification: catch it at start-up.
        if not self._session.public_key.is_valid_signature(self.sign(_PROBE_MESSAGE), _PROBE_MESSAGE):
            self._session.close()
            raise ConfigurationError(
                "signing_token.key_label",
                f"the public key labelled {settings.key_label!r} does not match the private key of that label",
            )

    @property
    def settings(self) -> TokenSettings:
        """Where the key is, for signing worker processes that open their own sessions."""
        return self._settings

    @property
    def key_id(self) -> bytes:
        return self._session.public_key.key_id

    @property
    def public_key(self) -> PublicKey:
        return self._session.public_key

    def sign(self, message: bytes) -> bytes:
        with self._lock:
            return self._session.sign(message)

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def __repr__(self) -> str:
        return f"TokenSigner(token={self._settings.token_label!r}, key_id={self.key_id.hex()})"


def generate_in_token(settings: TokenSettings) -> PublicKey:
    """Create a new Ed25519 key pair inside the token, labelled ``settings.key_label``; the private
    half is sensitive and not extractable. Returns its public key.

    Raises:
        ConfigurationError: the token cannot be used, or it already holds a key of that label.
    """
    _require_pkcs11()
    import pkcs11
    from pkcs11 import exceptions as pkcs11_errors
    from pkcs11.util.ec import encode_named_curve_parameters

    try:
        existing = TokenSigner(settings)
    except ConfigurationError as exc:
        if exc.setting != "signing_token.key_label":
            raise
    else:
        existing.close()
        raise ConfigurationError(
            "signing_token.key_label",
            f"token {settings.token_label!r} already holds a key labelled {settings.key_label!r}; pick another label",
        )
    try:
        token = pkcs11.lib(settings.module).get_token(token_label=settings.token_label)
        with open_session(token, settings.pin, rw=True) as session:
            parameters = session.create_domain_parameters(
                pkcs11.KeyType.EC_EDWARDS,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
                local=True,
            )
            public, _private = parameters.generate_keypair(
                store=True,
                label=settings.key_label,
                mechanism=pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                private_template={pkcs11.Attribute.SENSITIVE: True, pkcs11.Attribute.EXTRACTABLE: False},
            )
            return PublicKey.from_raw(ed25519_point(bytes(public[pkcs11.Attribute.EC_POINT])))
    except (ValueError, pkcs11_errors.PKCS11Error) as exc:
        raise ConfigurationError(
            "signing_token", f"cannot create a key in token {settings.token_label!r}: {type(exc).__name__}"
        ) from exc
