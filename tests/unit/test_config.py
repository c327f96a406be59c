from __future__ import annotations

from pathlib import Path

import pytest

from collector_ext.config import DEFAULT_LISTEN, load_config
from collector_ext.errors import ConfigurationError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    return path


def test_yaml_then_environment_then_flags(tmp_path: Path) -> None:
    path = _write(tmp_path, "signing_key: k.key\narchive:\n  url: s3://a/p\n  retention_days: 30\n")
    config = load_config(
        path,
        environ={"COLLECTOR_EXT_ARCHIVE__RETENTION_DAYS": "90", "COLLECTOR_EXT_LISTEN": "127.0.0.1:15000"},
        overrides={"listen": "127.0.0.1:16000", "archive": {"url": None}},
    )
    assert config.archive.url == "s3://a/p"
    assert config.archive.retention_days == 90
    assert config.listen == "127.0.0.1:16000"
    assert config.archive.retention_mode == "GOVERNANCE"


def test_defaults() -> None:
    config = load_config(None, environ={}, overrides={"signing_key": "k", "archive": {"url": "./a"}})
    assert config.listen == DEFAULT_LISTEN
    assert config.max_message_bytes == 16 * 1024 * 1024
    assert config.checkpoint_interval_seconds == 60
    assert config.limits.max_inflight_bytes == 128 * 1024 * 1024
    assert config.limits.max_concurrent_requests == 64


def test_limits_from_the_environment_and_bounds() -> None:
    base = {"signing_key": "k", "archive": {"url": "./a"}}
    config = load_config(None, environ={"COLLECTOR_EXT_LIMITS__BODY_TIMEOUT_SECONDS": "5"}, overrides=base)
    assert config.limits.body_timeout_seconds == 5
    with pytest.raises(ConfigurationError, match=r"limits\.max_inflight_bytes"):
        load_config(None, environ={"COLLECTOR_EXT_LIMITS__MAX_INFLIGHT_BYTES": "1024"}, overrides=base)


@pytest.mark.parametrize(
    ("overrides", "setting", "fragment"),
    [
        # A key file or a PKCS#11 token: the error names signing_key and offers signing_token instead.
        ({"archive": {"url": "./a"}}, "signing_key", "is required"),
        ({"archive": {"url": "./a"}}, "signing_key", "or instead signing_token"),
        (
            {
                "archive": {"url": "./a"},
                "signing_key": "k",
                "signing_token": {"module": "m", "token_label": "t", "key_label": "k", "pin_file": "p"},
            },
            "signing_key",
            "both set",
        ),
        ({"signing_key": "k"}, "archive", "required"),
        ({"signing_key": "k", "archive": {"url": "s3://"}}, "archive.url", "bucket"),
        ({"signing_key": "k", "archive": {"url": "a", "retention_mode": "FOREVER"}}, "archive.retention_mode", ""),
        ({"signing_key": "k", "archive": {"url": "a", "retention_days": 0}}, "archive.retention_days", ""),
        ({"signing_key": "k", "archive": {"url": "a"}, "listen": "0.0.0.0:4317"}, "listen", "collector"),
        ({"signing_key": "k", "archive": {"url": "a"}, "listen": "nohost"}, "listen", "HOST:PORT"),
        ({"signing_key": "k", "archive": {"url": "a"}, "lisen": "x"}, "lisen", "not a known setting"),
    ],
)
def test_errors_name_the_setting(overrides: dict, setting: str, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigurationError) as error:
        load_config(None, environ={}, overrides=overrides)
    assert error.value.setting == setting
    assert fragment in error.value.problem


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [unclosed"), environ={})
    with pytest.raises(ConfigurationError, match="mapping"):
        load_config(_write(tmp_path, "- a list"), environ={})


def test_loki_section_is_validated_with_named_settings() -> None:
    base = {"signing_key": "k", "archive": {"url": "a"}}
    config = load_config(
        None, environ={"COLLECTOR_EXT_LOKI__TENANT": "team-a"}, overrides={**base, "loki": {"url": "http://loki:3100/"}}
    )
    assert config.loki is not None
    assert (config.loki.url, config.loki.tenant, config.loki.seal_in_line) == ("http://loki:3100", "team-a", False)
    assert "service.name" in config.loki.label_attributes
    with pytest.raises(ConfigurationError) as error:
        load_config(None, environ={}, overrides={**base, "loki": {"url": "loki:3100"}})
    assert error.value.setting == "loki.url"
    with pytest.raises(ConfigurationError) as error:
        load_config(None, environ={}, overrides={**base, "loki": {"url": "http://l", "label_attributes": ["a", "a"]}})
    assert error.value.setting == "loki.label_attributes"
    assert load_config(None, environ={}, overrides=base).loki is None


def test_signing_token_section_replaces_signing_key(tmp_path: Path) -> None:
    token = (
        "signing_token:\n  module: /usr/lib/softhsm/libsofthsm2.so\n  token_label: t\n  key_label: k\n"
        "  pin_file: /run/pin\n"
    )
    config = load_config(_write(tmp_path, token + "archive:\n  url: s3://a/p\n"), environ={})
    assert config.signing_key is None
    assert config.signing_token is not None and config.signing_token.mode == "run_key"
    environ = {"COLLECTOR_EXT_SIGNING_TOKEN__MODE": "per_record"}
    overridden = load_config(_write(tmp_path, token + "archive:\n  url: s3://a/p\n"), environ=environ)
    assert overridden.signing_token is not None and overridden.signing_token.mode == "per_record"
    with pytest.raises(ConfigurationError, match="both set"):
        load_config(_write(tmp_path, token + "signing_key: k.key\narchive:\n  url: s3://a/p\n"), environ={})
    with pytest.raises(ConfigurationError, match=r"^signing_key: is required.*signing_token") as missing:
        load_config(_write(tmp_path, "archive:\n  url: s3://a/p\n"), environ={})
    assert missing.value.setting == "signing_key"
    with pytest.raises(ConfigurationError, match=r"signing_token\.mode"):
        load_config(_write(tmp_path, token + "  mode: sometimes\narchive:\n  url: s3://a/p\n"), environ={})
