"""The effective security settings and the unsafe ones, from a configuration alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector_ext.config import SidecarConfig, load_config
from collector_ext.security_settings import insecure_settings, is_loopback, security_summary


def _config(**settings: Any) -> SidecarConfig:
    return load_config(None, environ={}, overrides={"signing_key": "k", "archive": {"url": "s3://b/p"}, **settings})


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:14317", True),
        ("127.3.2.1:1", True),
        ("[::1]:14317", True),
        ("localhost:14317", True),
        ("0.0.0.0:14317", False),
        ("[::]:14317", False),
        ("10.0.0.5:14317", False),
        ("collector.internal:14317", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_the_defaults_are_safe() -> None:
    assert insecure_settings(_config()) == []


def test_retention_none_from_the_environment_says_it_overrode_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("signing_key: k\narchive:\n  url: s3://b/p\n  retention_mode: GOVERNANCE\n")
    config = load_config(path, environ={"COLLECTOR_EXT_ARCHIVE__RETENTION_MODE": "NONE"})

    [finding] = insecure_settings(config)
    assert finding.setting == "archive.retention_mode"
    assert "environment variable COLLECTOR_EXT_ARCHIVE__RETENTION_MODE" in finding.reason
    assert f"overriding the config file {path}" in finding.reason
    summary = security_summary(config, key_id="ab")
    assert summary["retention_mode"] == "NONE"
    assert summary["retention_mode_source"] == "environment variable COLLECTOR_EXT_ARCHIVE__RETENTION_MODE"


def test_retention_none_from_one_source() -> None:
    [finding] = insecure_settings(_config(archive={"url": "s3://b/p", "retention_mode": "NONE"}))
    assert finding.reason.endswith("set by the command line")
    assert "overriding" not in finding.reason


def test_a_listener_off_loopback_without_tls_or_authentication_is_unsafe(tmp_path: Path) -> None:
    findings = insecure_settings(_config(listen="0.0.0.0:14317", metrics_listen="0.0.0.0:19464"))
    assert {f.setting: f.reason for f in findings} == {
        "listen": "listens on 0.0.0.0:14317, not a loopback address, without TLS and without client authentication",
        "metrics_listen": "listens on 0.0.0.0:19464, not a loopback address, without TLS and without client "
        "authentication",
    }
    tls_only = insecure_settings(_config(listen="0.0.0.0:14317", tls={"cert_file": "c", "key_file": "k"}))
    assert [(f.setting, f.reason.rpartition(", ")[2]) for f in tls_only] == [
        ("listen", "without client authentication")
    ]
    mtls = {"cert_file": "c", "key_file": "k", "client_ca_file": "ca"}
    assert insecure_settings(_config(listen="0.0.0.0:14317", http_listen="[::]:14318", tls=mtls)) == []


def test_the_summary_names_every_listener_and_setting_and_is_json() -> None:
    config = _config(
        listen="0.0.0.0:14317",
        spool={"directory": "/var/lib/collector-ext/spool"},
        loki={"url": "https://user:secret@loki.example:3100", "password": "hunter2-password"},
        tls={"cert_file": "c", "key_file": "k", "client_ca_file": "ca"},
    )
    summary = security_summary(config, key_id="00ff")
    text = json.dumps(summary)
    assert "secret" not in text and "hunter2" not in text
    assert summary["loki"] == "https://loki.example:3100"
    assert [
        (item["setting"], item["address"], item["tls"], item["client_certificates"]) for item in summary["listeners"]
    ] == [
        ("listen", "0.0.0.0:14317", True, True),
        ("http_listen", "127.0.0.1:14318", True, True),
        ("metrics_listen", "127.0.0.1:19464", False, False),
    ]
    assert summary["client_auth"]["mtls"] is True
    assert summary["retention_mode"] == "GOVERNANCE"
    assert summary["retention_days"] == 365
    assert summary["retention_mode_source"] == "default"
    assert summary["ack"] == "spool"
    assert summary["spool"] == "/var/lib/collector-ext/spool"
    assert summary["key_id"] == "00ff"
    assert summary["insecure_settings"] == []
    assert security_summary(_config(), key_id="00")["ack"] == "archive"  # no spool


def test_bearer_tokens_count_as_client_authentication_and_only_their_names_are_shown() -> None:
    tls = {"cert_file": "c", "key_file": "k"}
    tokens = [{"name": "collector-a", "file": "/run/tokens/a"}, {"name": "collector-b", "file": "/run/tokens/b"}]
    config = _config(
        listen="0.0.0.0:14317",
        metrics_listen="0.0.0.0:19464",
        tls=tls,
        metrics_tls=tls,
        auth={"tokens": tokens, "metrics_tokens": [{"name": "prometheus", "file": "/run/tokens/p"}]},
    )
    assert insecure_settings(config) == []
    summary = security_summary(config, key_id="00")
    assert summary["client_auth"]["tokens"] == 2
    assert summary["client_auth"]["token_names"] == ["collector-a", "collector-b"]
    assert summary["metrics_client_auth"]["token_names"] == ["prometheus"]
    metrics = next(item for item in summary["listeners"] if item["setting"] == "metrics_listen")
    assert metrics["tls"] is True and metrics["tokens"] is True
    assert "/run/tokens" not in json.dumps(summary), "where the tokens are kept is not needed to judge the settings"

    without_metrics_auth = _config(metrics_listen="0.0.0.0:19464", metrics_tls=tls)
    [finding] = insecure_settings(without_metrics_auth)
    assert finding.setting == "metrics_listen"
    assert finding.reason.endswith("without client authentication")


def test_the_signing_key_source_names_a_token_by_its_labels(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={},
        overrides={
            "archive": {"url": "s3://b/p"},
            "signing_token": {
                "module": "/usr/lib/softhsm/libsofthsm2.so",
                "token_label": "audit",
                "key_label": "collector-ext",
                "pin_file": str(tmp_path / "pin"),
            },
        },
    )
    source = security_summary(config, key_id="00")["signing_key_source"]
    assert source == "pkcs11 token 'audit', key 'collector-ext', mode run_key"
    assert security_summary(_config(), key_id="00")["signing_key_source"] == "file k"
