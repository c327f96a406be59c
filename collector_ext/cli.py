"""The ``collector-ext`` command line: serve, keygen, verify, prove, verify-proof, demo.

Exit codes of ``verify``: 0 everything verifies, 1 a finding shows tampering or loss, 2 it could
not run (bad arguments, unreachable archive, unreadable key). Errors print the project's
``diagnostics()`` text, which names the setting, file or object concerned.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from collector_ext import __version__
from collector_ext.errors import CollectorExtError, ConfigurationError, KeyFileError

if TYPE_CHECKING:
    from collector_ext.verify.run import VerifyOptions

EXIT_VERIFIED = 0
EXIT_FINDINGS = 1
EXIT_CANNOT_RUN = 2


def _fail(error: CollectorExtError, code: int = EXIT_CANNOT_RUN) -> None:
    from collector_ext.verify.render import escape_controls

    # Errors may quote what a hostile archive or server sent (keys, S3 error texts): escaped.
    click.echo(f"collector-ext: error: {escape_controls(error.diagnostics())}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="collector-ext")
def main() -> None:
    """Seal OpenTelemetry log records into a signed hash chain, archive them under Object Lock, and
    verify the archive."""


# Pinned witness keys, the same for `verify` and `verify-proof`.
_WITNESS_KEY_OPTION = click.option(
    "--witness-key",
    "witness_keys",
    multiple=True,
    help="A pinned witness's verifier key (from `collector-ext witness vkey`); repeat for several.",
)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML configuration file.")
@click.option("--listen", help="HOST:PORT for OTLP/gRPC (default 127.0.0.1:14317).")
@click.option("--signing-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) from keygen.")
@click.option("--archive", "archive_url", help="s3://bucket/prefix or a directory.")
@click.option("--retention-mode", type=click.Choice(["GOVERNANCE", "COMPLIANCE", "NONE"]), help="Object Lock mode.")
@click.option("--retention-days", type=int, help="Object Lock retention period in days.")
@click.option("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL / AWS default).")
@click.option("--max-message-bytes", type=int, help="Largest accepted OTLP request, after decompression.")
@click.option("--http-listen", help="HOST:PORT for OTLP/HTTP (default 127.0.0.1:14318).")
@click.option("--metrics-listen", help="HOST:PORT for Prometheus GET /metrics (default 127.0.0.1:19464).")
@click.option("--loki-url", help="Also push every archived record to this Loki, seal attached.")
@click.option("--loki-tenant", help="X-Scope-OrgID for Loki.")
@click.option("--spool", "spool_directory", type=click.Path(path_type=Path), help="Durable spool directory.")
@click.option(
    "--ack",
    type=click.Choice(["spool", "archive"]),
    help="Export succeeds once records are fsynced to the spool (default) or stored in the archive.",
)
@click.option("--writer-id", help="Stable name of this writer (default: the host or pod name).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def serve(
    config_path: Path | None,
    listen: str | None,
    signing_key: Path | None,
    archive_url: str | None,
    retention_mode: str | None,
    retention_days: int | None,
    endpoint_url: str | None,
    max_message_bytes: int | None,
    http_listen: str | None,
    metrics_listen: str | None,
    loki_url: str | None,
    loki_tenant: str | None,
    spool_directory: Path | None,
    ack: str | None,
    writer_id: str | None,
    log_level: str | None,
) -> None:
    """Run the sidecar until SIGTERM or SIGINT (then: health NOT_SERVING, in-flight requests finish,
    the spool drains into the archive as far as drain_timeout_seconds allows, a final checkpoint)."""
    from collector_ext.config import load_config
    from collector_ext.logging_setup import configure_logging
    from collector_ext.memory import pin_mmap_threshold
    from collector_ext.service import Sidecar

    pin_mmap_threshold()

    overrides: dict[str, Any] = {
        "listen": listen,
        "signing_key": signing_key,
        "max_message_bytes": max_message_bytes,
        "http_listen": http_listen,
        "metrics_listen": metrics_listen,
        "log_level": log_level,
        "loki": {"url": loki_url, "tenant": loki_tenant},
        "spool": {"directory": spool_directory},
        "ack": ack,
        "writer_id": writer_id,
        "archive": {
            "url": archive_url,
            "retention_mode": retention_mode,
            "retention_days": retention_days,
            "endpoint_url": endpoint_url,
        },
    }
    try:
        config = load_config(config_path, overrides=overrides)
        configure_logging(config.log_level)
        sidecar = Sidecar(config)
        asyncio.run(sidecar.run_until_signalled())
    except CollectorExtError as exc:
        _fail(exc)


@main.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory for the key pair.")
@click.option("--force", is_flag=True, help="Overwrite an existing key pair.")
@click.option("--token-module", type=click.Path(path_type=Path), help="PKCS#11 library: create the key in a token.")
@click.option("--token-label", help="With --token-module: the token's label.")
@click.option("--key-label", default="collector-ext", show_default=True, help="With --token-module: the key's label.")
@click.option("--pin-file", type=click.Path(path_type=Path), help="With --token-module: file holding the user PIN.")
@click.option("--existing", is_flag=True, help="With --token-module: write the public key of the token's existing key.")
def keygen(
    out_dir: Path,
    force: bool,
    token_module: Path | None,
    token_label: str | None,
    key_label: str,
    pin_file: Path | None,
    existing: bool,
) -> None:
    """Create an Ed25519 key pair: signing.key (mode 0600) and signing.pub; prints the key id. With
    --token-module the key is made inside a PKCS#11 token (it never leaves it) and only signing.pub
    is written."""
    from collector_ext.seal.keys import generate_key_pair

    if token_module is not None:
        _keygen_in_token(out_dir, force, token_module, token_label, key_label, pin_file, existing)
        return

    private_path, public_path = out_dir / "signing.key", out_dir / "signing.pub"
    if not force and (private_path.exists() or public_path.exists()):
        _fail(KeyFileError("--out", f"{out_dir} already holds a key pair; use --force to replace it"))
    pair = generate_key_pair()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if force and private_path.exists():
            private_path.unlink()
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pair.private_pem)
        public_path.write_bytes(pair.public_pem)
    except OSError as exc:
        _fail(KeyFileError("--out", f"cannot write the key pair to {out_dir}: {exc.strerror}"))
    click.echo(f"private key: {private_path} (mode 0600; keep it secret)")
    click.echo(f"public key:  {public_path} (give it to auditors)")
    click.echo(f"key id:      {pair.key_id.hex()}")


def _keygen_in_token(
    out_dir: Path,
    force: bool,
    module: Path,
    token_label: str | None,
    key_label: str,
    pin_file: Path | None,
    existing: bool,
) -> None:
    from collector_ext.service import read_token_pin
    from collector_ext.token_signer import TokenSettings, TokenSigner, generate_in_token

    if token_label is None or pin_file is None:
        _fail(ConfigurationError("--token-module", "also give --token-label and --pin-file"))
        return
    public_path = out_dir / "signing.pub"
    if not force and public_path.exists():
        _fail(KeyFileError("--out", f"{out_dir} already holds signing.pub; use --force to replace it"))
    try:
        settings = TokenSettings(str(module), token_label, key_label, read_token_pin(pin_file))
        if existing:
            signer = TokenSigner(settings)
            public_key = signer.public_key
            signer.close()
        else:
            public_key = generate_in_token(settings)
    except CollectorExtError as exc:
        _fail(exc)
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        public_path.write_bytes(public_key.pem())
    except OSError as exc:
        _fail(KeyFileError("--out", f"cannot write {public_path}: {exc.strerror}"))
    click.echo(f"private key: in token {token_label!r}, label {key_label!r} (not extractable)")
    click.echo(f"public key:  {public_path} (give it to auditors)")
    click.echo(f"key id:      {public_key.key_id.hex()}")


@main.command()
@click.option("--archive", "archive_url", help="s3://bucket/prefix or a local copy (directory).")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pinned Ed25519 public key (PEM); repeat for several keys.",
)
@click.option(
    "--keyring",
    type=click.Path(path_type=Path),
    help="YAML file of pinned keys with validity windows and writer ids (instead of --public-key).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path),
    help="Remember what was verified here; the next run checks only what is new and catches rollbacks.",
)
@click.option(
    "--archive-id",
    help="The archive's name as its writers record it (default: the s3:// URL; for a local copy, none).",
)
@click.option(
    "--stale-after",
    help="Warn about an open chain whose newest checkpoint is older than this (e.g. 2h, 1d).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--all-signatures",
    is_flag=True,
    help="Check every record's signature, also where a signed checkpoint already vouches for its segment.",
)
@click.option(
    "--report-resends",
    is_flag=True,
    help="Report records sealed more than once (collector resends) anywhere, not only after restart marks.",
)
@click.option("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL / AWS default).")
@click.option("--region", help="S3 region (else AWS_REGION / AWS default).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option("--loki-url", help="Also check that Loki holds every archived record, unaltered, with its seal.")
@click.option("--loki-tenant", help="X-Scope-OrgID for Loki.")
@click.option("--loki-bearer-token", envvar="COLLECTOR_EXT_LOKI_BEARER_TOKEN", help="Bearer token for Loki.")
@click.option("--loki-username", help="Basic-auth user for Loki.")
@click.option("--loki-password", envvar="COLLECTOR_EXT_LOKI_PASSWORD", help="Basic-auth password for Loki.")
@click.option("--loki-ca-file", type=click.Path(path_type=Path), help="CA bundle for Loki's TLS certificate.")
@click.option("--loki-query", default='{service_name=~".+"}', show_default=True, help="Stream selector to read.")
@click.option("--loki-seal-in-line", is_flag=True, help="The sidecar ran with loki.seal_in_line (Loki 2.9).")
@click.option(
    "--loki-label-attribute",
    "loki_label_attributes",
    multiple=True,
    help="Resource attributes the sidecar used as Loki labels (default: Loki's own list).",
)
@click.option("--since", default="24h", show_default=True, help="Loki window to cross-check: 30m, 24h, 7d.")
@_WITNESS_KEY_OPTION
@click.option(
    "--witnesses-required",
    type=click.IntRange(0),
    help="How many pinned witnesses must have cosigned the newest checkpoint (default: all --witness-key).",
)
@click.option(
    "--witness-grace",
    default="10m",
    show_default=True,
    help="Checkpoints younger than this need not be cosigned or time-stamped yet.",
)
@click.option(
    "--tsa-cert",
    type=click.Path(path_type=Path),
    help="Pinned time-stamping authority: PEM file with its certificate, then its issuers up to the root.",
)
@click.option(
    "--require-timestamp", is_flag=True, help="The newest checkpoint must carry a valid token (needs --tsa-cert)."
)
@click.option(
    "--witness-url",
    "witness_urls",
    multiple=True,
    help="A witness to ask which trees it cosigned for this archive's chains; each must still be in the archive.",
)
@click.option(
    "--shard",
    "shard_text",
    metavar="I/N",
    help="Check only shard I (0-based) of N and write a shard report for --merge (see --shard-by).",
)
@click.option(
    "--shard-by",
    type=click.Choice(["chain", "range"]),
    default="chain",
    show_default=True,
    help="How --shard and --processes split the archive. chain: shard I checks every N-th chain whole. "
    "range: every chain is cut at up to N-1 checkpoints into ranges of its segments of about equal bytes "
    "(chosen from the listing alone), and range j of the chain of rank r is shard (j + r) mod N's, so one "
    "long chain is checked by N shards at once; each range resumes after its seam checkpoint and --merge "
    "proves every seam.",
)
@click.option(
    "--shard-report",
    type=click.Path(path_type=Path),
    help="Where --shard writes its JSON report (default: standard output).",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Merge the shard reports given as arguments into one verdict (no archive is read).",
)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Check the archive's chains in this many local worker processes (as shards), merged into one verdict.",
)
@click.argument("reports", nargs=-1, type=click.Path(path_type=Path))
def verify(
    archive_url: str | None,
    public_keys: tuple[Path, ...],
    as_json: bool,
    all_signatures: bool,
    report_resends: bool,
    endpoint_url: str | None,
    region: str | None,
    progress: bool | None,
    loki_url: str | None,
    loki_tenant: str | None,
    loki_bearer_token: str | None,
    loki_username: str | None,
    loki_password: str | None,
    loki_ca_file: Path | None,
    loki_query: str,
    loki_seal_in_line: bool,
    loki_label_attributes: tuple[str, ...],
    since: str,
    keyring: Path | None,
    state_path: Path | None,
    archive_id: str | None,
    stale_after: str | None,
    witness_keys: tuple[str, ...],
    witnesses_required: int | None,
    witness_grace: str,
    tsa_cert: Path | None,
    require_timestamp: bool,
    witness_urls: tuple[str, ...],
    shard_text: str | None,
    shard_by: str,
    shard_report: Path | None,
    merge: bool,
    reports: tuple[Path, ...],
    processes: int,
) -> None:
    """Verify an archive against pinned public keys. Exit 0 verified, 1 tampering or loss, 2 could not run.

    Across machines: run `verify --shard I/N --shard-report FILE` for I = 0..N-1 (each exits 0 once its
    report is written), then `verify --merge FILE...` for the verdict and exit code. With `--shard-by range`
    one long chain is split across the shards too (every shard must be run with the same --shard-by)."""
    if merge:
        _merge_shards(reports, as_json)
        return
    if reports:
        _fail(ConfigurationError("REPORTS", "shard reports are read only with --merge"))
    if archive_url is None:
        _fail(ConfigurationError("--archive", "missing: give s3://bucket/prefix or a directory (or --merge REPORTS)"))
        return
    shard = None
    if shard_text is not None:
        from collector_ext.verify.shard import parse_shard

        try:
            shard = parse_shard(shard_text, shard_by)
        except ConfigurationError as exc:
            _fail(exc)
    elif shard_report is not None:
        _fail(ConfigurationError("--shard-report", "needs --shard I/N"))
    if shard_text is not None or processes > 1:
        option = "--shard" if shard_text is not None else "--processes"
        conflicts = (
            (state_path, "--state"),
            (witness_urls, "--witness-url"),
            (loki_url, "--loki-url"),
            (shard_text is not None and processes > 1, "--processes"),
        )
        for given, name in conflicts:
            if given:
                _fail(ConfigurationError(option, f"checks the archive in shards; {name} needs a whole run"))
        if processes > 1 and (witness_keys or tsa_cert is not None):
            _fail(ConfigurationError("--processes", "not with --witness-key or --tsa-cert: run those in one process"))
    if bool(public_keys) == bool(keyring):
        _fail(ConfigurationError("--public-key", "give one or more --public-key files, or one --keyring file"))
    stale_seconds: float | None = None
    if stale_after is not None:
        try:
            stale_seconds = parse_duration(stale_after)
        except ValueError as exc:
            _fail(ConfigurationError("--stale-after", str(exc)))
    from collector_ext.deliver.loki.client import LokiConnection
    from collector_ext.deliver.loki.mapping import DEFAULT_LABEL_ATTRIBUTES, MappingSettings

    loki: LokiCheck | None = None
    if loki_url:
        try:
            window = parse_duration(since)
        except ValueError as exc:
            _fail(ConfigurationError("--since", str(exc)))
        loki = LokiCheck(
            LokiConnection(
                url=loki_url,
                tenant=loki_tenant,
                username=loki_username,
                password=loki_password,
                bearer_token=loki_bearer_token,
                ca_file=str(loki_ca_file) if loki_ca_file else None,
            ),
            MappingSettings(
                label_attributes=loki_label_attributes or DEFAULT_LABEL_ATTRIBUTES, seal_in_line=loki_seal_in_line
            ),
            loki_query,
            window,
        )
    from collector_ext.config import archive_id_for
    from collector_ext.verify.render import render_json, render_text
    from collector_ext.verify.run import VerifyOptions

    if archive_id is None and archive_url.startswith("s3://"):
        archive_id = archive_id_for(archive_url)
    options = VerifyOptions(
        check_all_signatures=all_signatures,
        report_resends=report_resends,
        archive_id=archive_id,
        stale_after_seconds=stale_seconds,
        witness_policy=_witness_policy(witness_keys, witnesses_required, witness_grace, tsa_cert, require_timestamp),
        witnessed_notes=_witnessed_notes(witness_urls, witness_keys, archive_id),
        shard=shard,
    )
    try:
        keys = _pinned_keys(public_keys, keyring)
        if shard is not None:
            checked = asyncio.run(_verify_shard(archive_url, keys, options, endpoint_url, region))
            _write_shard_report(checked, shard_report)
            return
        if processes > 1:
            import functools

            from collector_ext.service import open_archive
            from collector_ext.verify.parallel import check_in_processes

            opener = functools.partial(
                open_archive, archive_url, for_writing=False, endpoint_url=endpoint_url, region=region
            )
            loader = functools.partial(_pinned_keys, public_keys, keyring)
            report, description = check_in_processes(opener, loader, options, processes, shard_by)
            click.echo(render_json(report, description) if as_json else render_text(report, description))
            sys.exit(EXIT_VERIFIED if report.clean else EXIT_FINDINGS)
        report, description = asyncio.run(
            _verify(archive_url, keys, options, endpoint_url, region, progress, loki, state_path)
        )
    except CollectorExtError as exc:
        _fail(exc)
    except MemoryError:
        click.echo("collector-ext: error: out of memory while verifying; no verdict", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    click.echo(render_json(report, description) if as_json else render_text(report, description))
    sys.exit(EXIT_VERIFIED if report.clean else EXIT_FINDINGS)


async def _verify_shard(
    archive_url: str, keys: Any, options: VerifyOptions, endpoint_url: str | None, region: str | None
) -> Any:
    from collector_ext.service import open_archive
    from collector_ext.verify.run import check_archive_with_state

    store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url, region=region)
    await store.open()
    try:
        checked = await check_archive_with_state(store, keys, None, options)
    finally:
        await store.close()
    return checked.shard


def _write_shard_report(report: Any, path: Path | None) -> None:
    """The shard's JSON report to ``path`` (atomically) or standard output, and a line on stderr."""
    from collector_ext.files import write_atomically
    from collector_ext.verify.shard import encode_shard_report

    data = encode_shard_report(report)
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # one directory per audit (deploy/kubernetes)
            write_atomically(path, data)
        except OSError as exc:
            _fail(ConfigurationError("--shard-report", f"cannot write {path}: {exc.strerror}"))
    problems = sum(1 for part in report.chains for f in part.findings if f.severity.value in ("tampering", "loss"))
    checked = f"{len(report.chains)} of {len(report.chains_listed)} chains"
    if report.shard.by == "range":
        chains = len({part.summary.chain_id for part in report.chains})
        checked = f"{len(report.chains)} range(s) of {chains} of {len(report.chains_listed)} chains"
    click.echo(
        f"shard {report.shard.index}/{report.shard.count}: {checked}, {report.records_checked} records, "
        f"{problems} tampering/loss findings in them; "
        "the verdict is verify --merge's",
        err=True,
    )


def _merge_shards(paths: tuple[Path, ...], as_json: bool) -> None:
    """verify --merge: one verdict and exit code from the shard reports."""
    from collector_ext.verify.merge import merge_shard_reports
    from collector_ext.verify.render import render_json, render_text
    from collector_ext.verify.shard import ShardReportError, decode_shard_report

    if not paths:
        _fail(ConfigurationError("--merge", "give the shard reports to merge, e.g. verify --merge shard-*.json"))
    reports = []
    try:
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ShardReportError(f"--merge {path}", f"cannot be read: {exc.strerror}") from exc
            reports.append((str(path), decode_shard_report(data, str(path))))
        report = merge_shard_reports(reports)
    except CollectorExtError as exc:
        _fail(exc)
        return
    description = reports[0][1].archive
    click.echo(render_json(report, description) if as_json else render_text(report, description))
    sys.exit(EXIT_VERIFIED if report.clean else EXIT_FINDINGS)


def _witnessed_notes(urls: tuple[str, ...], witness_keys: tuple[str, ...], archive_id: str | None) -> tuple[bytes, ...]:
    """What each --witness-url holds for this archive's origins (FORMAT.md 19.4 step 5); exits 2 when
    one cannot be read."""
    if not urls:
        return ()
    if not witness_keys:
        _fail(ConfigurationError("--witness-url", "needs --witness-key: the witnesses whose cosignatures count"))
    if archive_id is None:
        _fail(ConfigurationError("--witness-url", "needs --archive-id for a local copy: the archive's name"))
    from collector_ext.seal.note import chain_origin
    from collector_ext.witness.monitor import witnessed_notes

    assert archive_id is not None
    prefix = chain_origin(archive_id, b"")
    notes: list[bytes] = []
    for url in urls:
        try:
            notes += asyncio.run(witnessed_notes(url, prefix))
        except CollectorExtError as exc:
            _fail(exc)
    return tuple(notes)


def _witness_policy(
    witness_keys: tuple[str, ...],
    required: int | None,
    grace: str,
    tsa_cert: Path | None,
    require_timestamp: bool,
) -> Any:
    """verify's witness and TSA options as a WitnessPolicy (FORMAT.md 19.4); exits 2 naming the option."""
    from collector_ext.verify.witnesses import WitnessPolicy
    from collector_ext.witness.timestamp import TsaTrust
    from collector_ext.witness.vkey import WitnessKeyError, parse_witness_vkey

    pinned = {}
    for vkey in witness_keys:
        try:
            name, key = parse_witness_vkey(vkey)
        except WitnessKeyError as exc:
            _fail(ConfigurationError("--witness-key", f"{vkey!r}: {exc}"))
        pinned[name] = key
    count = len(pinned) if required is None else required
    if count > len(pinned):
        _fail(ConfigurationError("--witnesses-required", f"{count} is more than the {len(pinned)} --witness-key given"))
    try:
        grace_seconds = 0.0 if grace in ("0", "0s") else parse_duration(grace)
    except ValueError as exc:
        _fail(ConfigurationError("--witness-grace", f"{exc} (or 0)"))
    trust = None
    if tsa_cert is not None:
        try:
            trust = TsaTrust.from_pem_bundle(tsa_cert.read_bytes(), f"--tsa-cert {tsa_cert}")
        except OSError as exc:
            _fail(KeyFileError("--tsa-cert", f"cannot read {tsa_cert}: {exc.strerror}"))
        except CollectorExtError as exc:
            _fail(exc)
    elif require_timestamp:
        _fail(ConfigurationError("--require-timestamp", "needs --tsa-cert: the TSA whose tokens count"))
    return WitnessPolicy(pinned, count, trust, require_timestamp, grace_seconds)


def _pinned_keys(public_keys: tuple[Path, ...], keyring: Path | None) -> Any:
    """The keyring from --keyring, or from the --public-key files (no windows).

    Raises:
        KeyFileError: a key file or the keyring cannot be read or parsed (names it).
    """
    from collector_ext.seal.keys import load_public_key_pem
    from collector_ext.verify.keys import Keyring, PinnedKey, parse_keyring

    if keyring is not None:
        try:
            data = keyring.read_bytes()
        except OSError as exc:
            raise KeyFileError("--keyring", f"cannot read {keyring}: {exc.strerror}") from exc
        return parse_keyring(data, f"--keyring {keyring}", lambda name: (keyring.parent / name).read_bytes())
    pinned = []
    for path in public_keys:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError("--public-key", f"cannot read {path}: {exc.strerror}") from exc
        pinned.append(PinnedKey(load_public_key_pem(data, f"--public-key {path}"), source=str(path)))
    return Keyring(pinned)


def _read_state(path: Path, archive: str) -> Any:
    from collector_ext.verify.state import StateFileError, load_state

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None  # the first run: everything is checked and remembered
    except OSError as exc:
        raise StateFileError(str(path), f"cannot be read: {exc.strerror}") from exc
    return load_state(data, str(path), archive)


def _write_state(path: Path, data: bytes) -> None:
    """Atomically: a temporary file beside it, fsynced, renamed over it, the directory fsynced."""
    from collector_ext.files import write_atomically
    from collector_ext.verify.state import StateFileError

    try:
        write_atomically(path, data)
    except OSError as exc:
        raise StateFileError(str(path), f"cannot be written: {exc.strerror}") from exc


async def _verify(
    archive_url: str,
    keys: Any,
    options: VerifyOptions,
    endpoint_url: str | None,
    region: str | None,
    progress: bool | None,
    loki: LokiCheck | None,
    state_path: Path | None,
) -> tuple[Any, str]:
    from tqdm import tqdm

    from collector_ext.service import open_archive
    from collector_ext.verify.run import check_archive_with_state, with_findings
    from collector_ext.verify.state import dump_state

    store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url, region=region)
    state = _read_state(state_path, store.description) if state_path is not None else None
    await store.open()
    bar = tqdm(
        total=0, unit="obj", desc="verifying", file=sys.stderr, disable=(not progress) if progress is not None else None
    )

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    cross_check = loki.start() if loki is not None else None
    try:
        checked = await check_archive_with_state(
            store,
            keys,
            state,
            options,
            on_progress,
            record_observer=cross_check.add_segment if cross_check is not None else None,
        )
    finally:
        bar.close()
        await store.close()
    report = checked.report
    if state_path is not None:
        _write_state(state_path, dump_state(checked.state))
    if loki is not None and cross_check is not None:
        report = with_findings(report, await loki.read_and_compare(cross_check))
    return report, store.description


class LokiCheck:
    """What ``verify --loki-url`` needs: where Loki is, how the sidecar mapped, and the window."""

    def __init__(self, connection: Any, mapping: Any, query: str, window_seconds: float) -> None:
        self.connection = connection
        self.mapping = mapping
        self.query = query
        self.window_seconds = window_seconds
        self.end_ns = 0

    def start(self) -> Any:
        import time

        from collector_ext.deliver.loki.mapping import EntryMapper
        from collector_ext.verify.loki_crosscheck import LokiCrossCheck

        self.end_ns = time.time_ns()
        return LokiCrossCheck(EntryMapper(self.mapping), self.end_ns - int(self.window_seconds * 1e9), self.end_ns)

    async def read_and_compare(self, cross_check: Any) -> list[Any]:
        from collector_ext.deliver.loki.client import LokiClient

        client = LokiClient(self.connection)
        await client.open()
        try:
            async for entry in client.query_range(
                self.query, self.end_ns - int(self.window_seconds * 1e9), self.end_ns
            ):
                cross_check.add_loki(entry)
        finally:
            await client.close()
        findings: list[Any] = cross_check.finish()
        return findings


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '24h', '7d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    return float(number) * units[unit]


@main.command()
@click.option("--archive", "archive_url", help="s3://bucket/prefix or a local copy (directory).")
@click.option("--public-key", "public_keys", multiple=True, type=click.Path(path_type=Path), help="Pinned key (PEM).")
@click.option("--keyring", type=click.Path(path_type=Path), help="Keyring file (instead of --public-key).")
@click.option("--since", help="Start of the period (inclusive): a date (2026-01-01, UTC) or an ISO 8601 time.")
@click.option("--until", help="End of the period (exclusive): a date or an ISO 8601 time with Z or an offset.")
@click.option("--late", default="15m", show_default=True, help="How long after its event a record may be sealed.")
@click.option("--where", "wheres", multiple=True, help="KEY=VALUE a record must have (repeat: all must hold).")
@click.option("--service", help="Only records of this service.name.")
@click.option(
    "--format", "report_format", type=click.Choice(["csv", "jsonl", "html"]), default="csv", show_default=True
)
@click.option("--out", type=click.Path(path_type=Path), help="The report file; its manifest is written beside it.")
@click.option("--body-length", default=500, show_default=True, type=click.IntRange(0, 1_000_000))
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="As verify --state.")
@click.option("--archive-id", help="As verify --archive-id.")
@click.option("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL / AWS default).")
@click.option("--region", help="S3 region (else AWS_REGION / AWS default).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
@click.option(
    "--check",
    "check_manifest",
    type=click.Path(path_type=Path),
    help="Reproduce the report a manifest pins and compare (with the keys and S3 settings).",
)
def report(
    archive_url: str | None,
    public_keys: tuple[Path, ...],
    keyring: Path | None,
    since: str | None,
    until: str | None,
    late: str,
    wheres: tuple[str, ...],
    service: str | None,
    report_format: str,
    out: Path | None,
    body_length: int,
    state_path: Path | None,
    archive_id: str | None,
    endpoint_url: str | None,
    region: str | None,
    progress: bool | None,
    check_manifest: Path | None,
) -> None:
    """Verified records of a period, with the bounds that prove it complete, as CSV, JSONL or HTML.
    Exit 0 verified (and complete), 1 tampering or loss, 2 could not run."""
    from collector_ext.config import archive_id_for
    from collector_ext.report.period import Filter, Period, parse_time
    from collector_ext.report.run import ReportOptions
    from collector_ext.verify.run import VerifyOptions

    try:
        if bool(public_keys) == bool(keyring):
            raise ConfigurationError("--public-key", "give one or more --public-key files, or one --keyring file")
        keys = _pinned_keys(public_keys, keyring)
        if check_manifest is not None:
            sys.exit(_check_report(check_manifest, keys, endpoint_url, region, progress))
        if archive_url is None or since is None or until is None or out is None:
            missing = [
                o for o, v in (("--archive", archive_url), ("--since", since), ("--until", until), ("--out", out))
            ]
            raise ConfigurationError(
                ", ".join(o for o, v in zip(missing, (archive_url, since, until, out), strict=True) if v is None),
                "required (or --check MANIFEST)",
            )
        try:
            late_seconds = parse_duration(late) if late not in ("0", "0s") else 0.0
        except ValueError as exc:
            raise ConfigurationError("--late", str(exc)) from exc
        filters = tuple(Filter.parse(w) for w in wheres)
        if service is not None:
            filters += (Filter("service.name", service),)
        period = Period(parse_time(since, "--since"), parse_time(until, "--until"), int(late_seconds * 1e9), filters)
        if archive_id is None and archive_url.startswith("s3://"):
            archive_id = archive_id_for(archive_url)
        options = ReportOptions(period=period, format=report_format, body_limit=body_length)  # type: ignore[arg-type]
        result = asyncio.run(
            _report(
                archive_url,
                keys,
                options,
                out,
                VerifyOptions(archive_id=archive_id),
                endpoint_url,
                region,
                progress,
                state_path,
            )
        )
    except CollectorExtError as exc:
        _fail(exc)
    except MemoryError:
        click.echo("collector-ext: error: out of memory while reporting; no report", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    from collector_ext.verify.render import escape_controls

    for warning in result.warnings:
        click.echo(f"collector-ext: warning: {escape_controls(warning)}", err=True)
    report_ = result.report
    complete = all(c.complete for c in report_.chains)
    verdict = "VERIFIED" if report_.verified else "NOT VERIFIED (tampering or loss found)"
    click.echo(
        f"{verdict}; {result.manifest['report']['rows']} rows in {out}; "
        f"{'complete' if complete else 'NOT proven complete (see the bounds)'} for {len(report_.chains)} chains; "
        f"manifest {out.name}.manifest.json"
        if out is not None
        else ""
    )
    sys.exit(EXIT_VERIFIED if report_.verified else EXIT_FINDINGS)


async def _report(
    archive_url: str,
    keys: Any,
    options: Any,
    out: Path,
    verify_options: Any,
    endpoint_url: str | None,
    region: str | None,
    progress: bool | None,
    state_path: Path | None,
) -> Any:
    from tqdm import tqdm

    from collector_ext.report.run import build_report
    from collector_ext.service import open_archive
    from collector_ext.verify.state import dump_state

    store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url, region=region)
    state = _read_state(state_path, store.description) if state_path is not None else None
    await store.open()
    bar = tqdm(
        total=0, unit="obj", desc="reporting", file=sys.stderr, disable=(not progress) if progress is not None else None
    )

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = await build_report(
            store, keys, options, out, verify_options=verify_options, state=state, progress=on_progress
        )
    finally:
        bar.close()
        await store.close()
    if state_path is not None:
        _write_state(state_path, dump_state(result.state))
    return result


def _check_report(
    manifest_path: Path, keys: Any, endpoint_url: str | None, region: str | None, progress: bool | None
) -> int:
    """report --check: the report file is the one pinned, and the archive still gives its rows."""
    import hashlib
    import json
    import tempfile

    from collector_ext.report.period import Filter, Period, parse_time
    from collector_ext.report.run import ReportOptions, compare_manifests
    from collector_ext.verify.run import VerifyOptions

    try:
        pinned = json.loads(manifest_path.read_text(encoding="utf-8"))
        parameters = pinned["parameters"]
        report_file = manifest_path.with_name(pinned["report"]["file"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError("--check", f"{manifest_path} is not a readable report manifest ({exc})") from exc
    problems = []
    try:
        if hashlib.sha256(report_file.read_bytes()).hexdigest() != pinned["report"]["sha256"]:
            problems.append(f"{report_file.name} is not the report the manifest pins (its SHA-256 differs)")
    except OSError as exc:
        problems.append(f"{report_file.name} cannot be read: {exc.strerror}")
    filters = tuple(Filter.parse(text) for text in parameters["filters"])
    period = Period(
        parse_time(parameters["since"], "--check since"),
        parse_time(parameters["until"], "--check until"),
        int(parameters["late_seconds"] * 1e9),
        filters,
    )
    options = ReportOptions(period=period, format=parameters["format"], body_limit=parameters["body_limit"])
    archive = parameters["archive"]
    with tempfile.TemporaryDirectory() as directory:
        again = asyncio.run(
            _report(
                archive,
                keys,
                options,
                Path(directory) / report_file.name,
                VerifyOptions(),
                endpoint_url,
                region,
                progress,
                None,
            )
        )
    problems += compare_manifests(pinned, again.manifest)
    from collector_ext.verify.render import escape_controls

    for problem in problems:
        click.echo(f"DIFFERS: {escape_controls(problem)}")
    if problems:
        click.echo(f"report check: {manifest_path.name} does NOT match the archive")
        return EXIT_FINDINGS
    click.echo(
        f"report check: {report_file.name} is the report pinned by {manifest_path.name}, and the archive gives the "
        f"same {pinned['report']['rows']} rows and bounds, verified"
    )
    return EXIT_VERIFIED


@main.command()
@click.option("--keep", type=click.Path(path_type=Path), help="Keep the demo's keys and a copy of the archive here.")
def demo(keep: Path | None) -> None:
    """Run everything on embedded defaults: S3 with Object Lock, the sidecar, an AI workflow, verify."""
    from collector_ext.demo import run_demo

    try:
        ok = run_demo(keep)
    except CollectorExtError as exc:
        _fail(exc, EXIT_FINDINGS)
    sys.exit(0 if ok else EXIT_FINDINGS)


@main.command()
@click.option("--archive", "archive_url", required=True, help="s3://bucket/prefix or a local copy (directory).")
@click.option("--chain", "chain_hex", help="The record's chain id (32 hex digits).")
@click.option("--seq", "seq_text", help="Its sequence number N, or A-B for a run of records.")
@click.option(
    "--record",
    "record_file",
    type=click.Path(path_type=Path),
    help="Instead of --chain/--seq: a JSON object naming the record, as a Loki entry's audit_chain_id and "
    "audit_seq fields or a report row's chain_id and sequence.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The proof file to write.")
@click.option("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL / AWS default).")
@click.option("--region", help="S3 region (else AWS_REGION / AWS default).")
def prove(
    archive_url: str,
    chain_hex: str | None,
    seq_text: str | None,
    record_file: Path | None,
    out: Path,
    endpoint_url: str | None,
    region: str | None,
) -> None:
    """Write a self-contained proof that records are in the archive (tlog-proof; check it with verify-proof).

    Reads the chain's newest checkpoint note, the hash tiles on the records' paths and the segments
    holding them, never the whole chain. Exit 0 when written, 2 when no proof could be made.
    """
    from collector_ext.files import write_atomically
    from collector_ext.prove.build import build_proof
    from collector_ext.prove.proof_file import encode_proof

    chain_id, first, last = _proof_target(chain_hex, seq_text, record_file)

    async def run() -> Any:
        from collector_ext.service import open_archive

        store = open_archive(archive_url, for_writing=False, endpoint_url=endpoint_url, region=region)
        await store.open()
        try:
            return await build_proof(store, chain_id, first, last)
        finally:
            await store.close()

    try:
        built = asyncio.run(run())
    except CollectorExtError as exc:
        _fail(exc)
    try:
        write_atomically(out, encode_proof(built.proof), mode=0o644)  # a proof is meant to be shared
    except OSError as exc:
        _fail(ConfigurationError("--out", f"cannot write {out}: {exc.strerror}"))
    records = f"record {first}" if first == last else f"records {first}-{last}"
    click.echo(
        f"wrote {out}: {records} of chain {chain_id.hex()} in the tree of {built.tree.size} records "
        f"({built.note_key}; {built.objects_read} objects read)"
    )


def _proof_target(chain_hex: str | None, seq_text: str | None, record_file: Path | None) -> tuple[bytes, int, int]:
    """(chain id, first, last) from --chain/--seq or --record; exits 2 naming the option otherwise."""
    import json

    if record_file is not None:
        try:
            fields = json.loads(record_file.read_bytes())
        except (OSError, ValueError) as exc:
            _fail(ConfigurationError("--record", f"{record_file} is not a readable JSON object: {exc}"))
        if not isinstance(fields, dict):
            _fail(ConfigurationError("--record", f"{record_file} holds no JSON object"))
        # A Loki entry may carry its seal as structured metadata or, on Loki 2.9, inside the line.
        merged = {**(fields.get("structured_metadata") or {}), **fields} if isinstance(fields, dict) else {}
        chain_hex = str(merged.get("audit_chain_id", merged.get("chain_id", "")))
        seq_text = str(merged.get("audit_seq", merged.get("sequence", "")))
    if not chain_hex or not seq_text:
        _fail(ConfigurationError("--chain", "give --chain and --seq, or --record"))
    assert chain_hex is not None
    assert seq_text is not None
    try:
        chain_id = bytes.fromhex(chain_hex)
        if len(chain_id) != 16:
            raise ValueError
    except ValueError:
        _fail(ConfigurationError("--chain", f"{chain_hex!r} is not a chain id of 32 hex digits"))
    first_text, _, last_text = seq_text.partition("-")
    if not first_text.isdigit() or not (last_text or first_text).isdigit():
        _fail(ConfigurationError("--seq", f"{seq_text!r} is not N or A-B"))
    first, last = int(first_text), int(last_text or first_text)
    if last < first:
        _fail(ConfigurationError("--seq", f"{seq_text!r}: the run ends before it starts"))
    return chain_id, first, last


@main.command("verify-proof")
@click.argument("proof_file", type=click.Path(path_type=Path))
@click.option("--public-key", required=True, type=click.Path(path_type=Path), help="The writer's key (PEM).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and the records as JSON.")
@_WITNESS_KEY_OPTION
@click.option(
    "--witnesses-required",
    type=click.IntRange(0),
    help="How many pinned witnesses must have cosigned the proof's checkpoint (default: all --witness-key).",
)
def verify_proof_command(
    proof_file: Path, public_key: Path, as_json: bool, witness_keys: tuple[str, ...], witnesses_required: int | None
) -> None:
    """Check a proof file offline: checkpoint note signature, witness cosignatures, inclusion path,
    record signature.

    Exit 0 when it holds (the records are printed), 1 when a check fails (the check is named),
    2 when the file or a key cannot be read.
    """
    import json

    from collector_ext.prove.proof_file import check_proof
    from collector_ext.prove.render import render_proof_json, render_proof_text
    from collector_ext.seal.keys import load_public_key_pem
    from collector_ext.witness.vkey import WitnessKeyError, parse_witness_vkey

    witnesses = {}
    for vkey in witness_keys:
        try:
            name, witness_key = parse_witness_vkey(vkey)
        except WitnessKeyError as exc:
            _fail(ConfigurationError("--witness-key", f"{vkey!r}: {exc}"))
        witnesses[name] = witness_key
    required = len(witnesses) if witnesses_required is None else witnesses_required
    if required > len(witnesses):
        _fail(
            ConfigurationError(
                "--witnesses-required", f"{required} is more than the {len(witnesses)} --witness-key given"
            )
        )

    try:
        key_data = public_key.read_bytes()
    except OSError as exc:
        _fail(KeyFileError("--public-key", f"cannot read {public_key}: {exc.strerror}"))
    try:
        key = load_public_key_pem(key_data, f"--public-key {public_key}")
    except CollectorExtError as exc:
        _fail(exc)
    try:
        data = proof_file.read_bytes()
    except OSError as exc:
        _fail(ConfigurationError("PROOF_FILE", f"cannot read {proof_file}: {exc.strerror}"))
    report = check_proof(data, key, witnesses, required)
    if as_json:
        click.echo(json.dumps(render_proof_json(report, str(proof_file)), indent=1, sort_keys=True))
    else:
        click.echo(render_proof_text(report, str(proof_file)))
    sys.exit(EXIT_VERIFIED if report.ok else EXIT_FINDINGS)


@main.group()
def witness() -> None:
    """A checkpoint witness (C2SP tlog-witness): cosigns logs' checkpoints, refuses rollbacks and forks."""


@witness.command("serve")
@click.option("--name", required=True, help="The witness's key name, e.g. witness.example.com/team-b.")
@click.option(
    "--signing-key", required=True, type=click.Path(path_type=Path), help="Ed25519 private key (PEM) from keygen."
)
@click.option(
    "--state",
    "state_path",
    required=True,
    type=click.Path(path_type=Path),
    help="State file (per origin: the largest tree cosigned); on a persistent volume, backed up.",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    required=True,
    help="ORIGIN_PREFIX=PUBLIC_KEY_FILE: cosign origins starting with the prefix signed by this key; repeat.",
)
@click.option("--listen", default="127.0.0.1:17380", show_default=True, help="HOST:PORT to serve on.")
@click.option("--prefix", default="", help="URL path before /add-checkpoint (the submission prefix).")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def witness_serve(
    name: str, signing_key: Path, state_path: Path, logs: tuple[str, ...], listen: str, prefix: str, log_level: str
) -> None:
    """Serve POST <prefix>/add-checkpoint until SIGTERM or SIGINT; the state is persisted before each answer."""
    from collector_ext.logging_setup import configure_logging
    from collector_ext.witness.serve import WitnessSettings, serve_witness

    configure_logging(log_level)
    settings = WitnessSettings(name, signing_key, state_path, listen, logs, prefix)
    try:
        asyncio.run(serve_witness(settings))
    except CollectorExtError as exc:
        _fail(exc)


@witness.command("vkey")
@click.option("--name", required=True, help="The witness's key name, as given to witness serve --name.")
@click.option("--public-key", required=True, type=click.Path(path_type=Path), help="Its public key (PEM).")
def witness_vkey(name: str, public_key: Path) -> None:
    """Print the witness's verifier key, for the sidecar's witnesses: and verify --witness-key."""
    from collector_ext.seal.keys import load_public_key_pem
    from collector_ext.witness.vkey import witness_vkey as vkey_of

    try:
        data = public_key.read_bytes()
    except OSError as exc:
        _fail(KeyFileError("--public-key", f"cannot read {public_key}: {exc.strerror}"))
    try:
        click.echo(vkey_of(name, load_public_key_pem(data, f"--public-key {public_key}")))
    except (CollectorExtError, ValueError) as exc:
        _fail(ConfigurationError("--name", str(exc)) if isinstance(exc, ValueError) else exc)


if __name__ == "__main__":
    main()
