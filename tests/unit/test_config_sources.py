"""Archive URLs that would resolve elsewhere are refused, and the config knows which source set each
setting (the environment overriding the file must be visible at start-up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector_ext.config import SettingOrigin, archive_url_problem, load_config
from collector_ext.errors import ConfigurationError


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("s3://bucket/prefix/../..", "'..'"),
        ("s3://bucket/../other", "'..'"),
        ("s3://bucket/a/./b", "'.'"),
        ("s3://bucket/a//b", "empty part"),
        ("s3://bucket//a", "empty part"),
        ("s3://bucket/a\\b", "backslash"),
        ("s3://bucket/a\x1b[2Jb", "control character"),
        ("s3://bucket/a\nb", "control character"),
        ("/var/lib/archive/../etc", "'..'"),
        ("archive//copy", "empty part"),
        ("C:\\archive", "backslash"),
    ],
)
def test_an_archive_url_that_resolves_elsewhere_is_a_configuration_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_config(None, environ={}, overrides={"signing_key": "k", "archive": {"url": url}})
    assert caught.value.setting == "archive.url"
    assert fragment in caught.value.problem


@pytest.mark.parametrize(
    "url", ["s3://bucket", "s3://bucket/", "s3://bucket/prod", "s3://bucket/prod/eu-1/", "./archive", "/var/a/b/"]
)
def test_ordinary_archive_urls_pass(url: str) -> None:
    assert archive_url_problem(url) is None
    assert load_config(None, environ={}, overrides={"signing_key": "k", "archive": {"url": url}}).archive.url == url


def test_each_setting_knows_every_source_that_set_it(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("signing_key: k\narchive:\n  url: s3://a/p\n  retention_mode: GOVERNANCE\n")
    config = load_config(
        path,
        environ={"COLLECTOR_EXT_ARCHIVE__RETENTION_MODE": "NONE", "HOME": "/root"},
        overrides={"listen": "127.0.0.1:15000", "http_listen": None},
    )
    assert config.archive.retention_mode == "NONE"
    assert config.origins("archive.retention_mode") == (
        SettingOrigin("config file", str(path)),
        SettingOrigin("environment", "COLLECTOR_EXT_ARCHIVE__RETENTION_MODE"),
    )
    assert config.origins("archive.retention_mode")[-1].describe() == (
        "environment variable COLLECTOR_EXT_ARCHIVE__RETENTION_MODE"
    )
    assert config.origins("listen") == (SettingOrigin("command line"),)
    assert config.origins("http_listen") == ()  # a flag not given sets nothing
    assert config.origins("ack") == ()
    assert config.origins("archive.url") == (SettingOrigin("config file", str(path)),)
