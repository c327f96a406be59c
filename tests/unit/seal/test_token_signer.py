"""The token signer's pure parts and its errors without a token (tests/integration/test_pkcs11.py drives
a real SoftHSM2 token)."""

from __future__ import annotations

import sys

import pytest

from collector_ext.errors import ConfigurationError
from collector_ext.token_signer import TokenSettings, TokenSigner


def test_without_python_pkcs11_the_error_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # import pkcs11 now raises ImportError
    with pytest.raises(ConfigurationError, match=r"collector-ext\[pkcs11\]") as error:
        TokenSigner(TokenSettings("/no/such/module.so", "token", "key", "secret-pin"))
    assert error.value.setting == "signing_token"


def test_the_pin_is_never_shown() -> None:
    settings = TokenSettings("/no/such/module.so", "token", "key", "secret-pin")
    assert "secret-pin" not in repr(settings)
    with pytest.raises(ConfigurationError, match=r"signing_token\.module") as error:
        TokenSigner(settings)
    assert "secret-pin" not in str(error.value)
