"""Fuzzes the verifier with mutated archives: exit 0, 1 or 2 only, no traceback, no hang, no false VERIFIED.

    python tests/fuzz_verify.py --cases 100000 --seconds 1800
    python tests/fuzz_verify.py --engine atheris --seconds 600     # coverage-guided; pip install atheris
    python tests/fuzz_verify.py --replay 1234 --seed 1             # one case again, with its mutations

Each case takes one of a few small valid archives (tests/archive_builder.py), applies one to three
mutations (bit flips, truncation, appended or inserted bytes, a forged frame length, protobuf-like
junk, deep nesting, overlong varints and huge length fields, re-encoded records and checkpoints,
swapped, duplicated, deleted and renamed objects, keys carrying terminal control sequences), and
verifies the result in-process the way ``collector-ext verify`` does: ``check_archive`` then
``render_text``/``render_json``. Every ``--cli-every``-th case goes through the real command
(``collector_ext.cli.main`` under click's CliRunner) on a directory archive, where it may also meet
a FIFO, a symbolic link or a large sparse file named like a segment.

A case fails when the verifier raises anything but a CollectorExtError (the CLI's exit 2), the CLI
exits with another code or a traceback, a case runs longer than ``--case-timeout`` (a watchdog then
dumps every thread's stack and ends the run: a hang), the text output holds a character a terminal
would act on, or the archive verifies although its bytes changed in a way that matters (see
``may_verify``). The run prints its figures at the end: cases, cases per second, verdicts, the
slowest case.

The module is also the mutation engine of tests/unit/verify/test_fuzz.py (hypothesis): mutations take
a ``Chooser``, which hypothesis, ``random`` and atheris each implement.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` and ``collector_ext`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import faulthandler
import os
import random
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector_ext.errors import CollectorExtError
from collector_ext.pb import archive_pb2
from collector_ext.seal.framing import CHECKPOINT_MAGIC, SEGMENT_MAGIC, frame
from collector_ext.seal.keys import Ed25519Signer, PublicKey
from collector_ext.seal.layout import parse_checkpoint_key, parse_segment_key
from collector_ext.seal.wire import encode_varint
from collector_ext.verify.findings import VerificationReport
from collector_ext.verify.render import render_json, render_text
from collector_ext.verify.run import VerifyOptions, check_archive
from tests.archive_builder import BuiltArchive, build_archive, restart_mark
from tests.fakes import InMemoryArchive

Objects = dict[str, bytes]
MiB = 1 << 20
# Terminal sequences an archive could hide in a key: OSC title, CSI erase + carriage return, C1, bidi.
CONTROL_SNIPPETS = ("\x1b]0;owned\x07", "\x1b[2K\rverdict: VERIFIED", "\x9b31m", "\u202e", "\u2066", "\r", "\n")


class Chooser(Protocol):
    """Where a mutation takes its decisions from: hypothesis, ``random`` or atheris."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        ...

    def data(self, low: int, high: int) -> bytes:
        """Bytes, between low and high of them."""
        ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def data(self, low: int, high: int) -> bytes:
        return self._rng.randbytes(self._rng.randint(low, high))


def _pick(chooser: Chooser, items: list[Any] | tuple[Any, ...]) -> Any:
    return items[chooser.integer(0, len(items) - 1)]


# The archives mutations start from.


@dataclass
class Base:
    name: str
    objects: Objects
    keys: dict[bytes, PublicKey]
    segments: list[tuple[tuple[Any, ...], bytes]]  # (identity, bytes) in chain order
    checkpoints: list[tuple[tuple[Any, ...], bytes]]
    covered_segments: int  # segments [0, covered_segments) are listed by a checkpoint


def _identity(key: str) -> tuple[Any, ...] | None:
    """What a key says about its object, without the parts the verifier does not trust (the date, any
    leading path): two keys with one identity name the same object."""
    segment = parse_segment_key(key)
    if segment is not None:
        return ("segment", segment.chain_id_hex, segment.first_sequence, segment.last_sequence)
    checkpoint = parse_checkpoint_key(key)
    if checkpoint is not None:
        return ("checkpoint", checkpoint.chain_id_hex, checkpoint.checkpoint_number, checkpoint.last_sequence)
    return None


def fuzz_signer() -> Ed25519Signer:
    return Ed25519Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def _base(name: str, built: BuiltArchive, signer: Ed25519Signer, covered: int) -> Base:
    def identified(keys: list[str]) -> list[tuple[tuple[Any, ...], bytes]]:
        return [(identity, built.objects[key]) for key in keys if (identity := _identity(key)) is not None]

    return Base(
        name,
        dict(built.objects),
        {signer.key_id: signer.public_key},
        identified(built.segment_keys),
        identified(built.checkpoint_keys),
        covered,
    )


def base_archives() -> dict[str, Base]:
    """Small valid archives: every segment checkpointed; an uncovered tail; a restart mark inside a
    checkpointed segment (the info note must not excuse a changed byte)."""
    signer = fuzz_signer()
    return {
        "covered": _base("covered", build_archive(signer, segments=3, per_segment=4), signer, 3),
        "tail": _base("tail", build_archive(signer, segments=3, per_segment=4, checkpointed_segments=2), signer, 2),
        "restart": _base(
            "restart", build_archive(signer, segments=3, per_segment=4, special={5: restart_mark()}), signer, 3
        ),
    }


def may_verify(base: Base, objects: Mapping[str, bytes]) -> bool:
    """Whether the mutated archive may honestly verify: what the verifier can see of it is the base
    archive, or the base cut back to an earlier state (its first m segments and first k <= m
    checkpoints: deleting the newest objects together leaves a consistent, shorter archive, which
    FORMAT.md 17 documents as undetectable without a remembered state). Keys are compared by what
    they identify, so a segment moved to another date directory or under a leading path is the same
    segment, and a byte-identical second copy of a checkpoint is the same signed statement (a
    second copy of a segment is not: its records repeat). A segment no checkpoint lists may differ in
    bytes nothing signs (its header time), but never by bytes appended after its frame; so may a
    segment whose checkpoint was deleted. Objects outside the layout never matter."""
    segments: Counter[tuple[tuple[Any, ...], bytes]] = Counter()
    checkpoints: set[tuple[tuple[Any, ...], bytes]] = set()
    for key, data in objects.items():
        identity = _identity(key)
        if identity is None:
            continue
        if identity[0] == "segment":
            segments[(identity, data)] += 1
        else:
            checkpoints.add((identity, data))
    for m in range(1, len(base.segments) + 1):
        if sum(segments.values()) != m:
            continue
        for k in range(min(m, len(base.checkpoints)) + 1):
            # Checkpoint i lists segment i (tests/archive_builder.py): with the first k checkpoints
            # left, the first k segments are covered.
            if checkpoints == set(base.checkpoints[:k]) and _segments_match(
                base, segments, m, min(k, base.covered_segments)
            ):
                return True
    return False


def _segments_match(base: Base, segments: Counter[tuple[tuple[Any, ...], bytes]], m: int, covered: int) -> bool:
    for index, (identity, data) in enumerate(base.segments[:m]):
        if segments.get((identity, data)) == 1:
            continue
        if index >= covered:
            same = [(other, count) for (ident, other), count in segments.items() if ident == identity]
            if len(same) == 1 and same[0][1] == 1 and not same[0][0].startswith(data):
                continue
        return False
    return True


# Mutations. Each changes ``objects`` in place and returns a short description.


def _choose_key(objects: Objects, chooser: Chooser) -> str | None:
    if not objects:
        return None
    return str(_pick(chooser, sorted(objects)))


def _magic_for(key: str) -> bytes:
    return CHECKPOINT_MAGIC if key.endswith(".cxckpt") else SEGMENT_MAGIC


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | wire_type) + payload


def _protobuf_junk(chooser: Chooser, depth: int = 0) -> bytes:
    parts = []
    for _ in range(chooser.integer(0, 6)):
        number = _pick(chooser, (1, 2, 3, 4, 5, 9, 15, 16, 2047, 536870911))
        wire = chooser.integer(0, 5)
        if wire == 0:
            parts.append(_field(number, 0, encode_varint(_pick(chooser, (0, 1, 127, 128, 2**32, 2**63, 2**64 - 1)))))
        elif wire == 1:
            parts.append(_field(number, 1, chooser.data(8, 8)))
        elif wire == 2:
            inner = _protobuf_junk(chooser, depth + 1) if depth < 3 and chooser.integer(0, 1) else chooser.data(0, 80)
            parts.append(_field(number, 2, encode_varint(len(inner)) + inner))
        elif wire == 5:
            parts.append(_field(number, 5, chooser.data(4, 4)))
        else:  # a group start or end, possibly unbalanced
            parts.append(_field(number, wire, b""))
    return b"".join(parts)


def _flip_bit(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None or not objects[key]:
        return "flip: nothing"
    data = bytearray(objects[key])
    position, bit = chooser.integer(0, len(data) - 1), chooser.integer(0, 7)
    data[position] ^= 1 << bit
    objects[key] = bytes(data)
    return f"flip bit {bit} of byte {position} of {key}"


def _set_bytes(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None or not objects[key]:
        return "set: nothing"
    data = bytearray(objects[key])
    position = chooser.integer(0, len(data) - 1)
    replacement = chooser.data(1, 8)
    data[position : position + len(replacement)] = replacement
    objects[key] = bytes(data)
    return f"overwrite {len(replacement)} bytes at {position} of {key}"


def _truncate(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None or not objects[key]:
        return "truncate: nothing"
    size = chooser.integer(0, len(objects[key]) - 1)
    objects[key] = objects[key][:size]
    return f"truncate {key} to {size} bytes"


def _append(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "append: nothing"
    extra = chooser.data(1, 64)
    objects[key] += extra
    return f"append {len(extra)} bytes to {key}"


def _insert(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "insert: nothing"
    data = objects[key]
    position = chooser.integer(0, len(data))
    extra = chooser.data(1, 32)
    objects[key] = data[:position] + extra + data[position:]
    return f"insert {len(extra)} bytes at {position} of {key}"


def _cut(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None or not objects[key]:
        return "cut: nothing"
    data = objects[key]
    start = chooser.integer(0, len(data) - 1)
    end = chooser.integer(start + 1, min(len(data), start + 100))
    objects[key] = data[:start] + data[end:]
    return f"cut bytes {start}-{end} of {key}"


def _frame_length(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None or len(objects[key]) < 16:
        return "frame length: nothing"
    data = objects[key]
    body = len(data) - 16
    length = _pick(
        chooser, (0, max(body - 1, 0), body + 1, 2**31, 2**32, 2**63, 2**64 - 1, chooser.integer(0, 2**64 - 1))
    )
    objects[key] = data[:8] + length.to_bytes(8, "big") + data[16:]
    return f"frame length {length} in {key}"


def _magic(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "magic: nothing"
    magic = _pick(chooser, (SEGMENT_MAGIC, CHECKPOINT_MAGIC, b"CXSEG\x00v2", b"CXCKP\x00v0", chooser.data(8, 8)))
    objects[key] = magic + objects[key][8:]
    return f"magic {magic!r} on {key}"


def _junk_body(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "junk: nothing"
    body = _protobuf_junk(chooser)
    objects[key] = frame(_magic_for(key), body)
    return f"protobuf-like junk body ({len(body)} bytes) in {key}"


def _random_object(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "random: nothing"
    objects[key] = chooser.data(0, 300)
    return f"random bytes as {key}"


def _nested(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "nested: nothing"
    depth = _pick(chooser, (50, 99, 100, 101, 200, 1000, 5000))
    number = _pick(chooser, (1, 2, 7))
    if chooser.integer(0, 1):  # groups nest without a length: start-group tags, then end-group tags
        body = encode_varint(number << 3 | 3) * depth + encode_varint(number << 3 | 4) * depth
        shape = "groups"
    else:  # length-delimited messages inside messages
        body = b""
        for _ in range(depth):
            body = _field(number, 2, encode_varint(len(body)) + body)
        shape = "messages"
    objects[key] = frame(_magic_for(key), body)
    return f"{depth} nested {shape} in {key}"


def _huge_inner_length(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "huge length: nothing"
    number = _pick(chooser, (1, 2))
    length = _pick(chooser, (2**31 - 1, 2**32, 2**62, 2**64 - 1))
    if chooser.integer(0, 1):
        varint = encode_varint(length)
    else:  # overlong: more continuation bytes than any varint may have
        varint = b"\xff" * chooser.integer(10, 40) + b"\x01"
    body = _field(number, 2, varint + chooser.data(0, 16))
    objects[key] = frame(_magic_for(key), body)
    return f"field {number} with length {length if len(varint) <= 10 else 'overlong'} in {key}"


def _segment_keys(objects: Objects) -> list[str]:
    return sorted(key for key in objects if parse_segment_key(key) is not None)


def _checkpoint_keys(objects: Objects) -> list[str]:
    return sorted(key for key in objects if parse_checkpoint_key(key) is not None)


def _record_level(objects: Objects, chooser: Chooser) -> str:
    """Change one record (its entry or signature) and re-encode the segment, so the protobuf stays
    valid and the mutation reaches the chain rules."""
    keys = _segment_keys(objects)
    if not keys:
        return "record: nothing"
    key = _pick(chooser, keys)
    data = objects[key]
    segment = archive_pb2.Segment()
    try:
        segment.ParseFromString(data[16 : 16 + int.from_bytes(data[8:16], "big")])
    except Exception:
        return "record: not parseable"
    action = chooser.integer(0, 7)
    records = segment.records
    if action == 0 and records:
        index = chooser.integer(0, len(records) - 1)
        entry = bytearray(records[index].entry)
        if entry:
            entry[chooser.integer(0, len(entry) - 1)] ^= 1 << chooser.integer(0, 7)
        records[index].entry = bytes(entry)
        what = f"flip in entry {index}"
    elif action == 1 and records:
        index = chooser.integer(0, len(records) - 1)
        records[index].entry = records[index].entry[: chooser.integer(0, 80)]
        what = f"shorten entry {index}"
    elif action == 2 and records:
        index = chooser.integer(0, len(records) - 1)
        signature = bytearray(records[index].signature)
        if signature:
            signature[chooser.integer(0, len(signature) - 1)] ^= 1 << chooser.integer(0, 7)
        records[index].signature = bytes(signature)
        what = f"flip in signature {index}"
    elif action == 3 and len(records) >= 2:
        first, second = chooser.integer(0, len(records) - 1), chooser.integer(0, len(records) - 1)
        a, b = archive_pb2.SealedRecord(), archive_pb2.SealedRecord()
        a.CopyFrom(records[first])
        b.CopyFrom(records[second])
        records[first].CopyFrom(b)
        records[second].CopyFrom(a)
        what = f"swap records {first} and {second}"
    elif action == 4 and records:
        index = chooser.integer(0, len(records) - 1)
        copy = archive_pb2.SealedRecord()
        copy.CopyFrom(records[index])
        records.append(copy)
        what = f"repeat record {index}"
    elif action == 5 and records:
        index = chooser.integer(0, len(records) - 1)
        del records[index]
        what = f"delete record {index}"
    elif action == 6:
        header = segment.header
        header.created_unix_nano ^= 1 << chooser.integer(0, 62)
        what = "change header time"
    else:
        header = segment.header
        header.record_count = _pick(chooser, (0, 1, 2**31, 2**32 - 1, header.record_count + 1))
        what = "change header record count"
    objects[key] = frame(SEGMENT_MAGIC, segment.SerializeToString())
    return f"{what} of {key}"


def _checkpoint_level(objects: Objects, chooser: Chooser) -> str:
    keys = _checkpoint_keys(objects)
    if not keys:
        return "checkpoint: nothing"
    key = _pick(chooser, keys)
    data = objects[key]
    signed = archive_pb2.SignedCheckpoint()
    try:
        signed.ParseFromString(data[16 : 16 + int.from_bytes(data[8:16], "big")])
    except Exception:
        return "checkpoint: not parseable"
    part = "body" if chooser.integer(0, 1) else "signature"
    value = bytearray(getattr(signed, part))
    if value:
        value[chooser.integer(0, len(value) - 1)] ^= 1 << chooser.integer(0, 7)
    setattr(signed, part, bytes(value))
    objects[key] = frame(CHECKPOINT_MAGIC, signed.SerializeToString())
    return f"flip in the {part} of {key}"


def _swap(objects: Objects, chooser: Chooser) -> str:
    first, second = _choose_key(objects, chooser), _choose_key(objects, chooser)
    if first is None or second is None:
        return "swap: nothing"
    objects[first], objects[second] = objects[second], objects[first]
    return f"swap {first} and {second}"


def _other_key(key: str, chooser: Chooser) -> str:
    """A key near ``key``: another date, a leading path, another chain, other numbers, outside the
    layout, or one carrying terminal control sequences."""
    segment, checkpoint = parse_segment_key(key), parse_checkpoint_key(key)
    choice = chooser.integer(0, 6)
    if choice == 0 and segment is not None:
        return key.replace("/segments/2026/09/21/", "/segments/2026/09/22/")
    if choice == 1:
        return "copy/" + key
    if choice == 2 and (segment is not None or checkpoint is not None):
        chain = (segment or checkpoint).chain_id_hex  # type: ignore[union-attr]
        return key.replace(chain, "ff" * 16)
    if choice == 3 and segment is not None:
        first = segment.first_sequence + chooser.integer(1, 5)
        return key.replace(f"{segment.first_sequence:020d}-", f"{first:020d}-")
    if choice == 3 and checkpoint is not None:
        number = checkpoint.checkpoint_number + chooser.integer(1, 5)
        return key.replace(f"/{checkpoint.checkpoint_number:012d}-", f"/{number:012d}-")
    if choice == 4:
        return key + ".bak"
    if choice == 5:
        return f"{_pick(chooser, CONTROL_SNIPPETS)}/{key}"
    return f"notes/{_pick(chooser, CONTROL_SNIPPETS)}.txt"


def _duplicate(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "duplicate: nothing"
    target = _other_key(key, chooser) if chooser.integer(0, 2) else _choose_key(objects, chooser) or key
    objects[target] = objects[key]
    return f"copy {key} to {target}"


def _delete(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "delete: nothing"
    del objects[key]
    return f"delete {key}"


def _delete_newest(objects: Objects, chooser: Chooser) -> str:
    """Roll back: delete the newest checkpoints, and maybe the segments after them."""
    checkpoints = _checkpoint_keys(objects)
    segments = _segment_keys(objects)
    dropped = checkpoints[len(checkpoints) - chooser.integer(0, len(checkpoints)) :]
    dropped += segments[len(segments) - chooser.integer(0, len(segments)) :]
    for key in dropped:
        del objects[key]
    return f"delete the newest {len(dropped)} objects"


def _rename(objects: Objects, chooser: Chooser) -> str:
    key = _choose_key(objects, chooser)
    if key is None:
        return "rename: nothing"
    target = _other_key(key, chooser)
    objects[target] = objects.pop(key)
    return f"rename {key} to {target}"


def _add_unrecognised(objects: Objects, chooser: Chooser) -> str:
    key = "notes/" + _pick(chooser, CONTROL_SNIPPETS) + f"{chooser.integer(0, 9)}.txt"
    objects[key] = chooser.data(0, 64)
    return f"add {key!r}"


MUTATIONS: dict[str, Callable[[Objects, Chooser], str]] = {
    "flip": _flip_bit,
    "set": _set_bytes,
    "truncate": _truncate,
    "append": _append,
    "insert": _insert,
    "cut": _cut,
    "frame-length": _frame_length,
    "magic": _magic,
    "junk": _junk_body,
    "random": _random_object,
    "nested": _nested,
    "huge-length": _huge_inner_length,
    "record": _record_level,
    "checkpoint": _checkpoint_level,
    "swap": _swap,
    "duplicate": _duplicate,
    "delete": _delete,
    "rollback": _delete_newest,
    "rename": _rename,
    "unrecognised": _add_unrecognised,
}


def mutate(objects: Objects, chooser: Chooser, *, most: int = 3) -> list[str]:
    """Apply one to ``most`` mutations; their descriptions, in order."""
    names = sorted(MUTATIONS)
    return [MUTATIONS[_pick(chooser, names)](objects, chooser) for _ in range(chooser.integer(1, most))]


# Entries a directory archive may hold that are not regular files.

HOSTILE_ENTRIES = ("fifo", "dangling-link", "file-link", "directory-link", "sparse-file")


def write_case_to_directory(root: Path, case: Case, outside: Path) -> None:
    """Write a case's objects and hostile entries under ``root``; what the filesystem refuses (a key no
    file can have) is left out of the case, so the judge sees what was really written."""
    written: Objects = {}
    for key, data in case.objects.items():
        path = root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError:
            continue
        written[key] = data
    case.objects = written
    placed: dict[str, str] = {}
    for key, kind in case.hostile.items():
        try:
            place_hostile_entry(root, key, kind, outside)
        except OSError:
            continue
        placed[key] = kind
    case.hostile = placed


def place_hostile_entry(root: Path, key: str, kind: str, outside: Path) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling-link":
        os.symlink(outside / "does-not-exist", path)
    elif kind == "file-link":
        target = outside / "outside-file"
        target.write_bytes(b"not an archive object")
        os.symlink(target, path)
    elif kind == "directory-link":
        os.symlink(outside, path)
    else:  # sparse: large, costs no disk, must be refused by size, not read
        with open(path, "wb") as handle:
            handle.truncate(80 * MiB)


# Running cases.


def text_is_safe(text: str) -> bool:
    """No character a terminal would act on, other than the newlines between lines."""
    return all(line.isprintable() for line in text.split("\n"))


@dataclass
class Outcome:
    exit_code: int
    seconds: float
    report: VerificationReport | None = None
    error: str = ""


class CaseFailure(AssertionError):
    pass


def verify_in_process(
    objects: Objects,
    keys: Mapping[bytes, PublicKey],
    options: VerifyOptions,
    run: Callable[[Any], Any] = asyncio.run,
) -> Outcome:
    """What ``collector-ext verify`` does after opening the archive: check, then render."""
    store = InMemoryArchive()
    store.objects = dict(objects)
    started = time.perf_counter()
    try:
        report = run(check_archive(store, dict(keys), options))
    except CollectorExtError as exc:
        return Outcome(2, time.perf_counter() - started, error=exc.diagnostics())
    text = render_text(report, store.description)
    if not text_is_safe(text):
        raise CaseFailure(f"text output carries control characters: {text!r}")
    document = render_json(report, store.description)
    if not document.isascii():
        raise CaseFailure("JSON output is not ASCII")
    return Outcome(0 if report.clean else 1, time.perf_counter() - started, report)


def verify_with_cli(case: Case, public_pem: bytes, as_json: bool) -> Outcome:
    """The real command on a directory archive holding the case's objects and hostile entries. Keys a
    filesystem cannot hold as given (a file where another key needs a directory) are left out, and
    the case is updated to what was written, so the verdict is judged on what the command saw."""
    from click.testing import CliRunner

    from collector_ext.cli import main

    with tempfile.TemporaryDirectory(prefix="fuzz-verify-") as temporary:
        root, outside = Path(temporary) / "archive", Path(temporary) / "outside"
        root.mkdir()
        outside.mkdir()
        write_case_to_directory(root, case, outside)
        key_file = Path(temporary) / "key.pub"
        key_file.write_bytes(public_pem)
        arguments = ["verify", "--archive", str(root), "--public-key", str(key_file), "--no-progress"]
        if as_json:
            arguments.append("--json")
        started = time.perf_counter()
        result = CliRunner().invoke(main, arguments)
        seconds = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(result.exception))
        raise CaseFailure(f"the command raised:\n{trace}")
    if result.exit_code not in (0, 1, 2):
        raise CaseFailure(f"exit code {result.exit_code}")
    if "Traceback" in result.stdout or "Traceback" in result.stderr:
        raise CaseFailure(f"a traceback was printed: {result.stderr}")
    if not text_is_safe(result.stdout) or not text_is_safe(result.stderr):
        raise CaseFailure(f"output carries control characters: {result.stdout!r} {result.stderr!r}")
    return Outcome(result.exit_code, seconds, error=result.stderr)


@dataclass
class Case:
    base: Base
    objects: Objects
    mutations: list[str]
    options: VerifyOptions
    hostile: dict[str, str] = field(default_factory=dict)


def make_case(bases: dict[str, Base], chooser: Chooser, *, hostile: bool = False) -> Case:
    base = bases[_pick(chooser, sorted(bases))]
    objects = dict(base.objects)
    mutations = mutate(objects, chooser)
    options = VerifyOptions(
        check_all_signatures=bool(chooser.integer(0, 3) == 0),
        report_resends=bool(chooser.integer(0, 3) == 0),
        signature_threads=1,
    )
    case = Case(base, objects, mutations, options)
    if hostile:
        for _ in range(chooser.integer(0, 2)):
            kind = _pick(chooser, HOSTILE_ENTRIES)
            if kind == "sparse-file" and chooser.integer(0, 4):
                kind = "fifo"  # large files are slow without a size limit; keep them rare
            key = (
                _pick(chooser, sorted(objects))
                if objects and chooser.integer(0, 1)
                else _other_key(_pick(chooser, sorted(base.objects)), chooser)
            )
            objects.pop(key, None)
            case.hostile[key] = kind
            case.mutations.append(f"{kind} at {key}")
    return case


def check_verdict(case: Case, outcome: Outcome) -> None:
    """A VERIFIED that the archive's bytes do not allow is the failure that matters most."""
    if outcome.exit_code != 0:
        return
    named_like_objects = [key for key in case.hostile if _identity(key) is not None]
    if named_like_objects:
        raise CaseFailure(f"VERIFIED although {named_like_objects} cannot be read")
    if not may_verify(case.base, case.objects):
        raise CaseFailure("VERIFIED although the archive changed in a way that matters")


# The command.


@dataclass
class Figures:
    cases: int = 0
    cli_cases: int = 0
    verdicts: Counter[int] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    slowest: tuple[float, str] = (0.0, "")
    started: float = field(default_factory=time.perf_counter)

    def add(self, case: Case, outcome: Outcome, label: str) -> None:
        self.cases += 1
        self.verdicts[outcome.exit_code] += 1
        for mutation in case.mutations:
            self.mutations[mutation.split(" ", 1)[0]] += 1
        if outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, f"{label}: {case.base.name}: {'; '.join(case.mutations)}")

    def print(self) -> None:
        elapsed = time.perf_counter() - self.started
        names = {0: "0 verified", 1: "1 findings", 2: "2 could not run"}
        print(f"cases run: {self.cases} ({self.cli_cases} through the CLI on a directory archive)")
        print(f"elapsed: {elapsed:.1f} s, {self.cases / elapsed if elapsed else 0:.0f} cases/s")
        print("exit codes: " + ", ".join(f"{names[code]}: {self.verdicts[code]}" for code in (0, 1, 2)))
        print(f"failures: {self.failures}")
        seconds, label = self.slowest
        print(f"slowest case: {seconds * 1000:.1f} ms ({label!r})")


def _public_pem() -> bytes:
    return (
        fuzz_signer()
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def verify_case(case: Case, *, through_cli: bool, as_json: bool, runner: asyncio.Runner) -> Outcome:
    if through_cli:
        outcome = verify_with_cli(case, _public_pem(), as_json)
    else:
        outcome = verify_in_process(case.objects, case.base.keys, case.options, runner.run)
    check_verdict(case, outcome)
    return outcome


class Watchdog:
    """Ends the run when one case takes longer than ``timeout`` seconds: a hang. It names the case and
    dumps every thread's stack first."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._deadline = float("inf")
        self._label = ""
        threading.Thread(target=self._watch, name="fuzz-watchdog", daemon=True).start()

    def start(self, label: str) -> None:
        self._label = label
        self._deadline = time.monotonic() + self._timeout

    def stop(self) -> None:
        self._deadline = float("inf")

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            if time.monotonic() > self._deadline:
                print(f"HANG: {self._label} ran longer than {self._timeout} s", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(3)


def _report_failure(label: str, case: Case | None, exc: BaseException, save: Path | None) -> None:
    print(f"FAILED {label}: {exc}", file=sys.stderr)
    if not isinstance(exc, CaseFailure):
        traceback.print_exception(exc, file=sys.stderr)
    if case is not None:
        print(f"  base {case.base.name}; mutations: {case.mutations}", file=sys.stderr)
        if save is not None:
            target = save / label.replace(" ", "-")
            for key, data in case.objects.items():
                path = target / key.encode("unicode_escape").decode()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            print(f"  archive saved under {target}", file=sys.stderr)


def run_random(arguments: argparse.Namespace) -> int:
    bases = base_archives()
    figures = Figures()
    watchdog = Watchdog(arguments.case_timeout)
    deadline = time.monotonic() + arguments.seconds
    numbers = [arguments.replay] if arguments.replay is not None else range(arguments.cases)
    with asyncio.Runner() as runner:
        for number in numbers:
            if time.monotonic() > deadline:
                break
            chooser = RandomChooser(random.Random(f"{arguments.seed}:{number}"))
            through_cli = arguments.cli_every > 0 and number % arguments.cli_every == 0
            label = f"case {number} (seed {arguments.seed})"
            case = make_case(bases, chooser, hostile=through_cli)
            watchdog.start(f"{label}: {case.base.name}: {case.mutations}")
            try:
                outcome = verify_case(case, through_cli=through_cli, as_json=number % 2 == 0, runner=runner)
            except Exception as exc:
                figures.failures += 1
                _report_failure(label, case, exc, arguments.save_failures)
                if arguments.stop_on_failure:
                    break
                continue
            finally:
                watchdog.stop()
            figures.cli_cases += through_cli
            figures.add(case, outcome, label)
            if arguments.replay is not None:
                print(f"base {case.base.name}; mutations: {case.mutations}; exit {outcome.exit_code}")
                if outcome.report is not None:
                    print(render_text(outcome.report, "memory://archive"))
            elif figures.cases % 10000 == 0:
                print(f"... {figures.cases} cases", file=sys.stderr, flush=True)
    figures.print()
    return 1 if figures.failures else 0


class AtherisChooser:
    def __init__(self, provider: Any) -> None:
        self._provider = provider

    def integer(self, low: int, high: int) -> int:
        return int(self._provider.ConsumeIntInRange(low, high))

    def data(self, low: int, high: int) -> bytes:
        size = self._provider.ConsumeIntInRange(low, high)
        data = bytes(self._provider.ConsumeBytes(size))
        return data + bytes(size - len(data))


def run_atheris(arguments: argparse.Namespace) -> int:
    import importlib

    atheris: Any = importlib.import_module("atheris")  # optional: pip install atheris
    bases = base_archives()
    figures = Figures()
    runner = asyncio.Runner()
    watchdog = Watchdog(arguments.case_timeout)
    print("instrumenting every loaded function for coverage (a minute or two)...", file=sys.stderr, flush=True)
    atheris.instrument_all()
    figures.started = time.perf_counter()
    deadline = time.monotonic() + arguments.seconds

    def one_input(data: bytes) -> None:
        case = make_case(bases, AtherisChooser(atheris.FuzzedDataProvider(data)))
        watchdog.start(f"atheris input: {case.base.name}: {case.mutations}")
        try:
            outcome = verify_case(case, through_cli=False, as_json=False, runner=runner)
        finally:
            watchdog.stop()
        figures.add(case, outcome, "atheris input")
        # libFuzzer ends the process without running Python's exit handlers: stop here, figures first.
        if figures.cases >= arguments.cases or time.monotonic() > deadline:
            figures.print()
            sys.stdout.flush()
            os._exit(0)

    # Inputs up to 4 KiB from the start: each mutation draws a few dozen bytes of decisions.
    options = [
        "-max_len=4096",
        "-len_control=0",
        "-rss_limit_mb=4096",
        f"-max_total_time={int(arguments.seconds) + 60}",
    ]
    atheris.Setup([sys.argv[0], *options, *arguments.libfuzzer], one_input)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="how many cases (atheris: -runs)")
    parser.add_argument("--seconds", type=float, default=3600, help="stop after this long")
    parser.add_argument("--seed", default="1", help="seed of the random engine")
    parser.add_argument("--replay", type=int, help="run only this case number (random engine) and show its report")
    parser.add_argument("--cli-every", type=int, default=50, help="every n-th case through the CLI (0: never)")
    parser.add_argument("--case-timeout", type=float, default=60, help="a case running longer than this is a hang")
    parser.add_argument("--engine", choices=["random", "atheris"], default="random")
    parser.add_argument("--save-failures", type=Path, help="write each failing case's archive under this directory")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer options for --engine atheris (after --)")
    arguments = parser.parse_args()
    if arguments.engine == "atheris":
        return run_atheris(arguments)
    return run_random(arguments)


if __name__ == "__main__":
    sys.exit(main())
