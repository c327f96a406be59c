"""`collector-ext witness serve` as a subprocess on a loopback port: it cosigns a log's extensions,
refuses a rollback (409, with the size it holds) and a fork (422), logs both as evidence, and keeps
refusing them after a restart because its state was persisted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector_ext.seal.keys import Ed25519Signer, generate_key_pair, load_private_key_pem, load_public_key_pem
from collector_ext.seal.merkle import consistency_proof, leaf_hash, list_reader, tree_root
from collector_ext.seal.note import check_cosignature, checkpoint_text, parse_note, sign_note
from collector_ext.witness.protocol import AddCheckpoint, origin_digest
from collector_ext.witness.vkey import parse_witness_vkey

ORIGIN = "audit-bucket/prod/00112233445566778899aabbccddeeff"
NAME = "witness.example/team-b"
LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(64)]
FORKED = LEAVES[:10] + [leaf_hash(f"rewritten {i}".encode()) for i in range(10, 64)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Witness:
    def __init__(self, directory: Path, log_public: Path, origin_prefix: str = "audit-bucket/prod/") -> None:
        pair = generate_key_pair()
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / "witness.key"
        self.key.write_bytes(pair.private_pem)
        self.key.chmod(0o600)
        self.public = directory / "witness.pub"
        self.public.write_bytes(pair.public_pem)
        self.state = directory / "state.json"
        self.log_public = log_public
        self.origin_prefix = origin_prefix
        self.stderr = directory / "witness.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.port = _free_port()
        command = [
            sys.executable,
            "-m",
            "collector_ext.cli",
            "witness",
            "serve",
            "--name",
            NAME,
            "--signing-key",
            str(self.key),
            "--state",
            str(self.state),
            "--log",
            f"{self.origin_prefix}={self.log_public}",
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        self.process = subprocess.Popen(command, stderr=self.stderr.open("ab"), cwd=os.getcwd())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.process.poll() is None, self.stderr.read_text()
                time.sleep(0.1)
        raise AssertionError("witness did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def post(self, body: bytes) -> tuple[int, bytes, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/add-checkpoint", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers.get("Content-Type", "")

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def log_signer(tmp_path: Path) -> tuple[Ed25519Signer, Path]:
    pair = generate_key_pair()
    path = tmp_path / "log.pub"
    path.write_bytes(pair.public_pem)
    return load_private_key_pem(pair.private_pem, "test"), path


@pytest.fixture
def witness(tmp_path: Path, log_signer: tuple[Ed25519Signer, Path]) -> Iterator[Witness]:
    server = Witness(tmp_path / "witness", log_signer[1])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _note(signer: Ed25519Signer, size: int, leaves: list[bytes] = LEAVES) -> bytes:
    return sign_note(checkpoint_text(ORIGIN, size, tree_root(leaves[:size])), ORIGIN, signer)


def _body(signer: Ed25519Signer, old: int, new: int, leaves: list[bytes] = LEAVES) -> bytes:
    return AddCheckpoint(old, consistency_proof(old, new, list_reader(leaves)), _note(signer, new, leaves)).encode()


def test_witness_cosigns_then_refuses_rollback_and_fork_and_remembers_after_restart(
    witness: Witness, log_signer: tuple[Ed25519Signer, Path]
):
    signer = log_signer[0]
    vkey = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector_ext.cli",
            "witness",
            "vkey",
            "--name",
            NAME,
            "--public-key",
            str(witness.public),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    name, key = parse_witness_vkey(vkey)
    assert name == NAME and key == load_public_key_pem(witness.public.read_bytes(), "test")

    status, body, _ = witness.post(_body(signer, 0, 20))
    assert status == 200
    cosigned = parse_note(_note(signer, 20) + body)
    assert not isinstance(check_cosignature(cosigned, NAME, key), str)
    assert witness.post(_body(signer, 20, 40))[0] == 200

    # Rollback: the log presents an older tree as its newest.
    status, body, content_type = witness.post(_body(signer, 20, 20))
    assert (status, body, content_type) == (409, b"40\n", "text/x.tlog.size")
    # Fork: a tree that shares the first 10 entries only, with a proof from the size the witness holds.
    status, body, _ = witness.post(_body(signer, 40, 50, FORKED))
    assert status == 422, body
    # Same size, another root.
    assert witness.post(AddCheckpoint(40, (), _note(signer, 40, FORKED)).encode())[0] == 422

    witness.stop()
    witness.start()
    assert witness.post(_body(signer, 20, 30))[0] == 409
    assert witness.post(_body(signer, 40, 50, FORKED))[0] == 422
    assert witness.post(_body(signer, 40, 64))[0] == 200
    with urllib.request.urlopen(
        f"http://127.0.0.1:{witness.port}/{origin_digest(ORIGIN)}/checkpoint", timeout=10
    ) as response:
        served = parse_note(response.read())
    assert served.text == parse_note(_note(signer, 64)).text
    assert not isinstance(check_cosignature(served, NAME, key), str)

    evidence = [line for line in witness.log_lines() if line.get("level") == "WARNING"]
    assert [line["status"] for line in evidence] == [409, 422, 422, 409, 422]
    assert all(line["origin"] == ORIGIN for line in evidence)


def test_second_witness_process_on_the_same_state_is_refused(witness: Witness, log_signer: tuple[Ed25519Signer, Path]):
    second = Witness(witness.state.parent, log_signer[1])
    second.state = witness.state
    with pytest.raises(AssertionError, match="in use by another witness process"):
        second.start()
    second.stop()


def test_untrusted_log_and_unknown_origin_are_refused(witness: Witness):
    stranger = load_private_key_pem(generate_key_pair().private_pem, "test")
    assert witness.post(_body(stranger, 0, 5))[0] == 403
    other = sign_note(checkpoint_text("elsewhere/log", 1, LEAVES[0]), "elsewhere/log", stranger)
    assert witness.post(AddCheckpoint(0, (), other).encode())[0] == 404
    assert witness.post(b"old 1\n")[0] == 400
