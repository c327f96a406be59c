"""PostgreSQL pgaudit as an audit source: the collector's filelog operators on a real server's log.

The collector cannot run here, so this module carries a small interpreter of exactly the stanza
operator types, fields and expression forms that otel-config.yaml's `filelog/pgaudit` receiver uses
(add, copy, move, remove, json_parser with timestamp and severity blocks, regex_parser, csv_parser;
`if` expressions with ==, !=, matches, in, and, or, nil). The operators and every value in them are
read from otel-config.yaml; the interpreter refuses any operator type or setting it does not know,
so a change to the pipeline that it cannot follow fails here instead of being ignored.

A real PostgreSQL 15 with pgaudit (collector_ext/embedded_postgres.py) runs the statements; its jsonlog
lines go through the operators, the results go as OTLP log records through a real sidecar into a
directory archive, the archive is verified, and the archived attributes are checked.

What this does not show: that the collector's own stanza code behaves like the interpreter. Go's
encoding/csv, RE2 and strptime are approximated by their Python counterparts (the differences that
matter for pgaudit lines are handled below and named in README "Sources: PostgreSQL pgaudit").
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from tests.integration import postgres
from tests.integration.conftest import KeyPairFiles, any_value_to_python, archived_log_records, verify_archive_at
from tests.integration.postgres import TEST_DATABASE, TEST_ROLE, PostgresServer

ROOT = Path(__file__).resolve().parents[2]
OTEL_CONFIG = ROOT / "otel-config.yaml"
RECEIVER = "filelog/pgaudit"
EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


# ---------------------------------------------------------------------------------------------
# Field paths: body, body.a, attributes.a.b, attributes["a.b"], resource["service.name"]


class OperatorError(Exception):
    """What stanza reports as an operator error (handled by the operator's on_error)."""


_PATH_PART = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\["([^"]*)"\]')


def parse_field(text: str) -> tuple[str, list[str]]:
    root_match = re.match(r"(body|attributes|resource)", text)
    if not root_match:
        raise ValueError(f"unsupported field {text!r}")
    root, rest, keys = root_match.group(1), text[root_match.end() :], []
    while rest:
        part = _PATH_PART.match(rest)
        if not part:
            raise ValueError(f"unsupported field {text!r}")
        keys.append(part.group(1) if part.group(1) is not None else part.group(2))
        rest = rest[part.end() :]
    return root, keys


@dataclass
class Entry:
    """A stanza entry: the parts these operators touch."""

    body: Any
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    severity_number: int = 0
    severity_text: str = ""

    def _root(self, root: str) -> Any:
        return {"body": self.body, "attributes": self.attributes, "resource": self.resource}[root]

    def get(self, path: str) -> tuple[Any, bool]:
        root, keys = parse_field(path)
        value = self._root(root)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None, False
            value = value[key]
        return value, True

    def set(self, path: str, value: Any) -> None:
        """Set a field; a map set on a map merges into it (stanza's Merge), new keys winning."""
        root, keys = parse_field(path)
        if root == "body" and not keys:
            self.body = value
            return
        if root == "body" and not isinstance(self.body, dict):
            self.body = {}
        target = self._root(root)
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        if not keys:
            if not isinstance(value, dict):
                raise OperatorError(f"cannot set {root} root to a non-map")
            target.update(value)
        elif isinstance(value, dict) and isinstance(target.get(keys[-1]), dict):
            target[keys[-1]].update(value)
        else:
            target[keys[-1]] = value

    def delete(self, path: str) -> tuple[Any, bool]:
        root, keys = parse_field(path)
        if not keys:
            raise ValueError(f"cannot delete {path}")
        target = self._root(root)
        for key in keys[:-1]:
            if not isinstance(target, dict) or key not in target:
                return None, False
            target = target[key]
        if not isinstance(target, dict) or keys[-1] not in target:
            return None, False
        return target.pop(keys[-1]), True


# ---------------------------------------------------------------------------------------------
# expr-lang, the subset used: paths, "strings", nil, [lists], ==, !=, matches, in, and, or, ( )

_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op>==|!=|\[|\]|\(|\)|,|\.)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))'
)


class ExprError(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"unsupported expression syntax at {text[position:]!r} in {text!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        position = match.end()
    return out


class Expression:
    """A parsed `if:` expression; evaluate(entry) follows expr-lang's semantics for this subset:
    missing map keys are nil, member access on nil is an error, `and`/`or` short-circuit."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens = _tokens(text)
        self._at = 0
        self._tree = self._or()
        if self._at != len(self._tokens):
            raise ValueError(f"unsupported expression {text!r}")

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._at] if self._at < len(self._tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (value is not None and token[1] != value):
            raise ValueError(f"expected {value!r} in {self.text!r}")
        self._at += 1
        return token

    def _or(self) -> Any:
        node = self._and()
        while self._peek() == ("word", "or"):
            self._take()
            node = ("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._comparison()
        while self._peek() == ("word", "and"):
            self._take()
            node = ("and", node, self._comparison())
        return node

    def _comparison(self) -> Any:
        left = self._primary()
        token = self._peek()
        if token in (("op", "=="), ("op", "!="), ("word", "matches"), ("word", "in")):
            self._take()
            return (token[1], left, self._primary())
        return left

    def _primary(self) -> Any:
        kind, value = self._take()
        if kind == "string":
            return ("const", json.loads(value))
        if (kind, value) == ("word", "nil"):
            return ("const", None)
        if (kind, value) == ("op", "("):
            node = self._or()
            self._take(")")
            return node
        if (kind, value) == ("op", "["):
            items = [self._primary()]
            while self._peek() == ("op", ","):
                self._take()
                items.append(self._primary())
            self._take("]")
            return ("list", items)
        if kind == "word" and value in ("body", "attributes", "resource"):
            keys: list[str] = []
            while self._peek() in (("op", "."), ("op", "[")):
                if self._take()[1] == ".":
                    keys.append(self._take()[1])
                else:
                    keys.append(json.loads(self._take()[1]))
                    self._take("]")
            return ("path", value, keys)
        raise ValueError(f"unsupported expression element {value!r} in {self.text!r}")

    def evaluate(self, entry: Entry) -> Any:
        return self._eval(self._tree, entry)

    def _eval(self, node: Any, entry: Entry) -> Any:
        kind = node[0]
        if kind == "const":
            return node[1]
        if kind == "list":
            return [self._eval(item, entry) for item in node[1]]
        if kind == "path":
            value = entry._root(node[1])
            for key in node[2]:
                if value is None:
                    raise ExprError(f"cannot fetch {key} from nil in {self.text!r}")
                if not isinstance(value, dict):
                    raise ExprError(f"cannot fetch {key} from {type(value).__name__} in {self.text!r}")
                value = value.get(key)
            return value
        if kind == "and":
            return bool(self._eval(node[1], entry)) and bool(self._eval(node[2], entry))
        if kind == "or":
            return bool(self._eval(node[1], entry)) or bool(self._eval(node[2], entry))
        left, right = self._eval(node[1], entry), self._eval(node[2], entry)
        if kind == "==":
            return left == right
        if kind == "!=":
            return left != right
        if kind == "matches":
            if not isinstance(left, str) or not isinstance(right, str):
                raise ExprError(f"matches needs strings in {self.text!r}")
            return re.search(_go_regex(right), left) is not None
        if kind == "in":
            return left in right
        raise AssertionError(kind)


def _go_regex(pattern: str) -> str:
    """RE2 to Python re for the patterns used: `$` outside (?m) is end of text in Go."""
    return re.sub(r"(?<!\\)\$(?=\)*$)", r"\\Z", pattern)


# ---------------------------------------------------------------------------------------------
# Go's encoding/csv as stanza's csv_parser drives it (parseutils.ReadCSVRow): quoted fields may hold
# newlines and `""`; an unquoted newline starts a new record, which ReadCSVRow stitches onto the last
# field; CR LF inside a quoted field reads as LF; empty lines are skipped. Quote errors (bare `"` in an
# unquoted field, text after a closing quote, unterminated quote) are parse failures here; Go's reader
# returns the fields read so far with the error, which then fail stanza's field-count check unless
# the damage is in the last field. The header must match the field count exactly.


def _go_csv_records(text: str, delimiter: str) -> list[list[str]]:
    records: list[list[str]] = []
    position, length = 0, len(text)
    while position < length:
        if text[position] == "\n":  # empty line
            position += 1
            continue
        record: list[str] = []
        while True:
            if position < length and text[position] == '"':
                position += 1
                parts = []
                while True:
                    close = text.find('"', position)
                    if close < 0:
                        raise OperatorError('extraneous or missing " in quoted-field')
                    parts.append(text[position:close])
                    position = close + 1
                    if position < length and text[position] == '"':
                        parts.append('"')
                        position += 1
                        continue
                    if position == length or text[position] in (delimiter, "\n"):
                        break
                    raise OperatorError('extraneous or missing " in quoted-field')
                record.append("".join(parts).replace("\r\n", "\n"))
            else:
                end = position
                while end < length and text[end] not in (delimiter, "\n"):
                    end += 1
                value = text[position:end]
                if '"' in value:
                    raise OperatorError('bare " in non-quoted-field')
                record.append(value.removesuffix("\r"))
                position = end
            if position < length and text[position] == delimiter:
                position += 1
                if position == length:
                    record.append("")
                continue
            position += 1  # the newline ending the record (or past the end)
            break
        records.append(record)
    return records


def read_csv_row(text: str, delimiter: str) -> list[str]:
    records = _go_csv_records(text, delimiter)
    if not records:
        raise OperatorError("no csv lines found")
    joined = list(records[0])
    for record in records[1:]:
        joined[-1] += "\n" + record[0]
        joined.extend(record[1:])
    return joined


# ---------------------------------------------------------------------------------------------
# Operators

SEVERITY_ALIASES = {"debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
PARSER_KEYS = {"id", "type", "if", "on_error", "parse_from", "parse_to", "timestamp", "severity"}
ON_ERROR = {"send", "send_quiet", "drop", "drop_quiet"}


def _strptime_to_python(layout: str) -> str:
    # stanza's strptime: %L is milliseconds; Python's %f accepts 1 to 6 digits, so "123" reads as .123.
    supported = {"%Y", "%m", "%d", "%H", "%M", "%S", "%L", "%Z"}
    used = set(re.findall(r"%.", layout))
    if not used <= supported:
        raise ValueError(f"strptime directives not interpreted here: {sorted(used - supported)}")
    return layout.replace("%L", "%f")


class Operator:
    def __init__(self, spec: dict[str, Any], allowed: set[str]) -> None:
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"operator {spec.get('id')}: settings not interpreted here: {sorted(unknown)}")
        self.spec = spec
        self.id = spec.get("id", spec["type"])
        self.condition = Expression(spec["if"]) if "if" in spec else None
        self.on_error = spec.get("on_error", "send")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"operator {self.id}: on_error {self.on_error}")

    def process(self, entry: Entry, errors: list[str]) -> Entry | None:
        try:
            if self.condition is not None and not self.condition.evaluate(entry):
                return entry
            self.apply(entry)
        except (OperatorError, ExprError) as exc:
            if self.on_error in ("send", "drop"):
                errors.append(f"{self.id}: {exc}")
            return entry if self.on_error.startswith("send") else None
        return entry

    def apply(self, entry: Entry) -> None:
        raise NotImplementedError


class AddOperator(Operator):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec, {"id", "type", "if", "on_error", "field", "value"})
        if isinstance(spec["value"], str) and spec["value"].startswith("EXPR("):
            raise ValueError(f"operator {self.id}: EXPR values are not interpreted here")

    def apply(self, entry: Entry) -> None:
        entry.set(self.spec["field"], copy.deepcopy(self.spec["value"]))


class CopyOperator(Operator):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec, {"id", "type", "if", "on_error", "from", "to"})

    def apply(self, entry: Entry) -> None:
        value, found = entry.get(self.spec["from"])
        if not found:
            raise OperatorError(f"copy: field {self.spec['from']} does not exist")
        entry.set(self.spec["to"], copy.deepcopy(value))


class MoveOperator(Operator):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec, {"id", "type", "if", "on_error", "from", "to"})

    def apply(self, entry: Entry) -> None:
        value, found = entry.delete(self.spec["from"])
        if not found:
            raise OperatorError(f"move: field {self.spec['from']} does not exist")
        entry.set(self.spec["to"], value)


class RemoveOperator(Operator):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec, {"id", "type", "if", "on_error", "field"})

    def apply(self, entry: Entry) -> None:
        _, found = entry.delete(self.spec["field"])
        if not found:
            raise OperatorError(f"remove: field {self.spec['field']} does not exist")


class ParserOperator(Operator):
    """parse_from -> parse -> merge into parse_to, then the timestamp and severity blocks."""

    extra_keys: set[str] = set()

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec, PARSER_KEYS | self.extra_keys)
        self.parse_from = spec.get("parse_from", "body")
        self.parse_to = spec.get("parse_to", "attributes")
        self.timestamp = spec.get("timestamp")
        self.severity = spec.get("severity")
        if self.timestamp is not None:
            if set(self.timestamp) - {"parse_from", "layout_type", "layout"}:
                raise ValueError(f"operator {self.id}: timestamp settings not interpreted here")
            if self.timestamp.get("layout_type", "strptime") != "strptime":
                raise ValueError(f"operator {self.id}: only strptime layouts are interpreted here")
            self.timestamp_layout = _strptime_to_python(self.timestamp["layout"])
        if self.severity is not None:
            if set(self.severity) - {"parse_from", "preset", "mapping"} or self.severity.get("preset") != "none":
                raise ValueError(f"operator {self.id}: severity settings not interpreted here")
            self.severity_map: dict[str, int] = {}
            for alias, values in self.severity["mapping"].items():
                for value in values if isinstance(values, list) else [values]:
                    self.severity_map[str(value).lower()] = SEVERITY_ALIASES[alias]

    def parse(self, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def apply(self, entry: Entry) -> None:
        value, found = entry.get(self.parse_from)
        if not found:
            raise OperatorError(f"entry is missing the expected parse_from field {self.parse_from}")
        entry.set(self.parse_to, self.parse(value))
        if self.timestamp is not None:
            raw, found = entry.get(self.timestamp["parse_from"])
            if not found:
                raise OperatorError("time parser: log entry does not have the expected parse_from field")
            try:
                entry.timestamp = datetime.strptime(str(raw), self.timestamp_layout).replace(tzinfo=UTC)
            except ValueError as exc:
                raise OperatorError(f"parse timestamp: {exc}") from exc
        if self.severity is not None:
            raw, found = entry.get(self.severity["parse_from"])
            if not found:
                raise OperatorError("severity parser: log entry does not have the expected parse_from field")
            entry.severity_text = str(raw)
            entry.severity_number = self.severity_map.get(str(raw).lower(), 0)


class JsonParser(ParserOperator):
    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, str):
            raise OperatorError(f"type {type(value).__name__} cannot be parsed as JSON")
        try:
            # Go's json.Unmarshal into map[string]any: every number is a float64.
            parsed = json.loads(value, parse_int=float)
        except ValueError as exc:
            raise OperatorError(f"parse json: {exc}") from exc
        if not isinstance(parsed, dict):
            raise OperatorError("parse json: not an object")
        return parsed


class RegexParser(ParserOperator):
    extra_keys = {"regex"}

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.regex = re.compile(_go_regex(spec["regex"]))

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, str):
            raise OperatorError(f"type {type(value).__name__} cannot be parsed as regex")
        match = self.regex.search(value)
        if match is None:
            raise OperatorError("regex pattern does not match")
        return {name: text or "" for name, text in match.groupdict().items()}


class CsvParser(ParserOperator):
    extra_keys = {"header", "delimiter"}

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.delimiter = spec.get("delimiter", ",")
        self.header = spec["header"].split(self.delimiter)

    def parse(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, str):
            raise OperatorError(f"type '{type(value).__name__}' cannot be parsed as csv")
        fields = read_csv_row(value, self.delimiter)
        if len(fields) != len(self.header):
            raise OperatorError(f"wrong number of fields: expected {len(self.header)}, found {len(fields)}")
        return dict(zip(self.header, fields, strict=True))


OPERATOR_TYPES: dict[str, Callable[[dict[str, Any]], Operator]] = {
    "add": AddOperator,
    "copy": CopyOperator,
    "move": MoveOperator,
    "remove": RemoveOperator,
    "json_parser": JsonParser,
    "regex_parser": RegexParser,
    "csv_parser": CsvParser,
}

RECEIVER_KEYS = {"include", "start_at", "storage", "max_log_size", "operators"}


def receiver_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(OTEL_CONFIG.read_text(encoding="utf-8"))["receivers"][RECEIVER]
    return config


@dataclass
class Pipeline:
    operators: list[Operator]
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls) -> Pipeline:
        config = receiver_config()
        assert set(config) <= RECEIVER_KEYS, f"receiver settings not interpreted here: {set(config) - RECEIVER_KEYS}"
        operators = []
        for spec in config["operators"]:
            if spec["type"] not in OPERATOR_TYPES:
                raise ValueError(f"operator type {spec['type']} is not interpreted here")
            operators.append(OPERATOR_TYPES[spec["type"]](spec))
        assert len({op.id for op in operators}) == len(operators), "operator ids are unique"
        return cls(operators)

    def run(self, line: str, file_name: str = "postgresql.json") -> Entry | None:
        # filelog: the line is the body; include_file_name (default true) adds log.file.name.
        entry: Entry | None = Entry(body=line, attributes={"log.file.name": file_name})
        for operator in self.operators:
            assert entry is not None
            entry = operator.process(entry, self.errors)
            if entry is None:
                return None
        return entry


# ---------------------------------------------------------------------------------------------
# Entries as OTLP, the sidecar, the archive


def to_any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, dict):
        return AnyValue(
            kvlist_value=KeyValueList(values=[KeyValue(key=k, value=to_any_value(v)) for k, v in value.items()])
        )
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[to_any_value(v) for v in value]))
    if value is None:
        return AnyValue()
    raise TypeError(type(value))


from_any_value = any_value_to_python


def to_log_record(entry: Entry) -> LogRecord:
    return LogRecord(
        time_unix_nano=_unix_nanos(entry.timestamp) if entry.timestamp else 0,
        observed_time_unix_nano=time.time_ns(),
        severity_number=entry.severity_number,  # type: ignore[arg-type]
        severity_text=entry.severity_text,
        body=to_any_value(entry.body),
        attributes=[KeyValue(key=k, value=to_any_value(v)) for k, v in entry.attributes.items()],
    )


def _unix_nanos(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def export(port: int, entries: list[Entry]) -> None:
    """One ExportLogsServiceRequest per resource, as the collector's exporter sends a batch."""
    resources: dict[str, list[Entry]] = {}
    for entry in entries:
        resources.setdefault(json.dumps(entry.resource, sort_keys=True), []).append(entry)
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(
                    attributes=[KeyValue(key=k, value=to_any_value(v)) for k, v in group[0].resource.items()]
                ),
                scope_logs=[ScopeLogs(log_records=[to_log_record(e) for e in group])],
            )
            for group in resources.values()
        ]
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        call(request.SerializeToString(), timeout=30)


@dataclass(frozen=True)
class Archived:
    resource: dict[str, Any]
    record: LogRecord

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: from_any_value(kv.value) for kv in self.record.attributes}


def archived_records(archive: Path) -> list[Archived]:
    return [
        Archived(
            {kv.key: from_any_value(kv.value) for kv in Resource.FromString(r.payload.resource).attributes},
            LogRecord.FromString(r.payload.log_record),
        )
        for r in archived_log_records(archive)
    ]


def seal_and_read_back(
    run_sidecar: Callable[..., Any], archive: Path, key_pair: KeyPairFiles, entries: list[Entry]
) -> list[Archived]:
    with run_sidecar(str(archive)) as sidecar:
        export(sidecar.port, entries)
    report = verify_archive_at(str(archive), [key_pair.public_key])
    assert report.clean, report.findings
    archived = archived_records(archive)
    assert len(archived) == len(entries)
    return archived


# ---------------------------------------------------------------------------------------------
# The real server and its log

PREPARED_TEXT = 'O\'Brien said "hi", then\nleft: é 漢'
WORKLOAD = """
CREATE TABLE account (id int PRIMARY KEY, name text);
INSERT INTO account VALUES (1, 'alice');
SELECT name FROM account WHERE id = 1;
UPDATE account SET name = 'bob' WHERE id = 1;
DELETE FROM account WHERE id = 1;
GRANT SELECT ON account TO PUBLIC;
PREPARE add_account(int, text) AS INSERT INTO account VALUES ($1, $2);
EXECUTE add_account(2, E'O''Brien said "hi", then\\nleft: é 漢');
"""


@dataclass(frozen=True)
class ServerLog:
    lines: list[str]


@pytest.fixture(scope="module")
def server_log() -> Iterator[ServerLog]:
    """Run the workload and a failed login on a real PostgreSQL 15 + pgaudit; its jsonlog lines."""
    with PostgresServer() as server:
        done = server.app_sql(WORKLOAD)
        assert done.returncode == 0, done.stderr
        failed = server.app_sql("SELECT 1;", password="not the password")
        assert failed.returncode != 0 and "password authentication failed" in failed.stderr

        def complete(parsed: list[dict[str, Any]]) -> bool:
            messages = [p.get("message", "") for p in parsed]
            return any("password authentication failed" in m for m in messages) and any(
                m.startswith("AUDIT: ") and "add_account" in m and ",INSERT," in m for m in messages
            )

        yield ServerLog(server.wait_for_log(complete))


@pytest.fixture(scope="module")
def parsed(server_log: ServerLog) -> list[Entry]:
    pipeline = Pipeline.from_config()
    entries = [pipeline.run(line) for line in server_log.lines]
    assert all(e is not None for e in entries), "no line is dropped"
    assert pipeline.errors == [], pipeline.errors
    return [e for e in entries if e is not None]


def _audit(entries: list[Entry], command: str, **attributes: str) -> Entry:
    found = [
        e
        for e in entries
        if e.attributes.get("db.operation.name") == command
        and all(e.attributes.get(k) == v for k, v in attributes.items())
        and e.attributes.get("user.name") == TEST_ROLE
    ]
    assert len(found) == 1, f"{command} {attributes}: {len(found)} records"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Tests


def test_every_line_of_the_real_log_is_kept_and_every_audit_line_parses(
    server_log: ServerLog, parsed: list[Entry]
) -> None:
    assert len(parsed) == len(server_log.lines)
    audit_lines = [line for line in server_log.lines if json.loads(line)["message"].startswith("AUDIT: ")]
    assert len(audit_lines) >= 9
    for line, entry in zip(server_log.lines, parsed, strict=True):
        assert entry.body == line, "the sealed body is the line PostgreSQL wrote"
        assert entry.resource == {"service.name": "postgresql"}
        assert entry.attributes["db.system.name"] == "postgresql"
        assert "pgaudit.parse_error" not in entry.attributes, entry.attributes
        assert entry.timestamp is not None and entry.severity_text and entry.severity_number > 0
        source = json.loads(line)
        # The timestamp is the line's, not the time it was read.
        assert (
            entry.timestamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{entry.timestamp.microsecond // 1000:03d} UTC"
            == (source["timestamp"])
        )
        if source["message"].startswith("AUDIT: "):
            assert entry.attributes["pgaudit.class"] in {"READ", "WRITE", "ROLE", "DDL", "FUNCTION", "MISC"}
            assert "message" not in entry.attributes["postgresql"], "parsed message is not repeated"
            assert "pgaudit_payload" not in entry.attributes
        else:
            assert entry.attributes["postgresql"]["message"] == source["message"]


def test_statement_kinds_become_database_semantic_convention_attributes(parsed: list[Entry]) -> None:
    expected = {
        ("CREATE TABLE", "DDL", "CREATE TABLE account (id int PRIMARY KEY, name text);"),
        ("INSERT", "WRITE", "INSERT INTO account VALUES (1, 'alice');"),
        ("SELECT", "READ", "SELECT name FROM account WHERE id = 1;"),
        ("UPDATE", "WRITE", "UPDATE account SET name = 'bob' WHERE id = 1;"),
        ("DELETE", "WRITE", "DELETE FROM account WHERE id = 1;"),
    }
    for command, audit_class, statement in expected:
        entry = _audit(parsed, command, **{"db.query.text": statement})
        attributes = entry.attributes
        assert attributes["pgaudit.class"] == audit_class
        assert attributes["pgaudit.audit_type"] == "SESSION"
        assert attributes["pgaudit.object_type"] == "TABLE"
        assert attributes["pgaudit.object_name"] == "public.account"
        assert attributes["db.collection.name"] == "public.account"
        assert attributes["db.namespace"] == TEST_DATABASE
        assert attributes["pgaudit.parameter"] == "<none>"
        assert attributes["pgaudit.statement_id"].isdigit() and attributes["pgaudit.substatement_id"] == "1"
        assert attributes["pgaudit.rows"].isdigit()
        assert attributes["client.address"] == "127.0.0.1" and isinstance(attributes["client.port"], float)
        assert attributes["session.id"] and attributes["postgresql"]["backend_type"] == "client backend"
        assert entry.severity_text == "LOG" and entry.severity_number == 9
    assert _audit(parsed, "SELECT").attributes["pgaudit.rows"] == "1"


def test_a_grant_is_a_role_event_without_a_collection(parsed: list[Entry]) -> None:
    grant = _audit(parsed, "GRANT").attributes
    assert grant["pgaudit.class"] == "ROLE"
    assert grant["db.query.text"] == "GRANT SELECT ON account TO PUBLIC;"
    assert grant["pgaudit.object_type"] == "TABLE" and grant["pgaudit.object_name"] == ""
    assert "db.collection.name" not in grant


def test_prepared_statement_parameters_keep_quotes_commas_newlines_and_non_ascii(parsed: list[Entry]) -> None:
    entry = _audit(
        parsed, "INSERT", **{"db.query.text": "PREPARE add_account(int, text) AS INSERT INTO account VALUES ($1, $2);"}
    )
    parameter = entry.attributes["pgaudit.parameter"]
    # pgaudit joins the parameters as CSV (each quoted where needed): one more CSV level to undo.
    assert next(csv.reader(io.StringIO(parameter))) == ["2", PREPARED_TEXT]
    assert entry.attributes["pgaudit.class"] == "WRITE"
    assert entry.attributes["db.collection.name"] == "public.account"


def test_a_failed_login_is_kept_with_the_user_and_the_error(parsed: list[Entry]) -> None:
    (failed,) = [e for e in parsed if e.attributes.get("db.response.status_code") == "28P01"]
    attributes = failed.attributes
    assert attributes["user.name"] == TEST_ROLE
    assert attributes["db.namespace"] == TEST_DATABASE
    assert attributes["error.type"] == "28P01"
    assert attributes["postgresql"]["message"] == f'password authentication failed for user "{TEST_ROLE}"'
    assert attributes["postgresql"]["detail"].startswith("Connection matched pg_hba.conf line ")
    assert attributes["client.address"] == "127.0.0.1"
    assert failed.severity_text == "FATAL" and failed.severity_number == 21
    assert "pgaudit.class" not in attributes
    # log_connections: the attempt itself is there too, without an error.
    received = [e for e in parsed if e.attributes["postgresql"].get("message", "").startswith("connection received:")]
    assert received and all("error.type" not in e.attributes for e in received)


def test_parsed_records_are_sealed_verified_and_archived_with_their_attributes(
    parsed: list[Entry], run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    archived = seal_and_read_back(run_sidecar, tmp_path / "archive", key_pair, parsed)
    for entry, stored in zip(parsed, archived, strict=True):
        assert stored.resource == {"service.name": "postgresql"}
        assert stored.record.body.string_value == entry.body
        assert stored.attributes == entry.attributes
        assert entry.timestamp is not None and stored.record.time_unix_nano == _unix_nanos(entry.timestamp)
        assert stored.record.severity_text == entry.severity_text
    by_command = {
        a.attributes.get("db.operation.name"): a.attributes
        for a in archived
        if a.attributes.get("user.name") == TEST_ROLE
    }
    assert {"CREATE TABLE", "INSERT", "SELECT", "UPDATE", "DELETE", "GRANT"} <= set(by_command)
    assert by_command["GRANT"]["pgaudit.class"] == "ROLE"
    assert by_command["CREATE TABLE"]["pgaudit.class"] == "DDL"
    prepared = [a.attributes for a in archived if "add_account" in a.attributes.get("db.query.text", "")]
    assert any(next(csv.reader(io.StringIO(p["pgaudit.parameter"]))) == ["2", PREPARED_TEXT] for p in prepared)
    failed = [a for a in archived if a.attributes.get("error.type") == "28P01"]
    assert len(failed) == 1 and failed[0].record.severity_number == 21


# --- without PostgreSQL: hand-written lines


def _jsonlog_line(message: str) -> str:
    return json.dumps(
        {
            "timestamp": "2026-12-02 10:15:01.123 UTC",
            "user": "app",
            "dbname": "shop",
            "pid": 4242,
            "session_id": "6b0fefa1.1092",
            "error_severity": "LOG",
            "message": message,
            "backend_type": "client backend",
        },
        ensure_ascii=False,
    )


MALFORMED_AUDIT = [
    "AUDIT: SESSION,1,1,READ,SELECT",  # too few fields
    'AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.account,"SELECT 1,<none>,1',  # unterminated quote
    'AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.account,SELECT "x",<none>,1,extra',  # bare quote
]


@pytest.mark.parametrize("message", MALFORMED_AUDIT)
def test_a_malformed_audit_line_is_kept_and_marked(message: str) -> None:
    pipeline = Pipeline.from_config()
    entry = pipeline.run(_jsonlog_line(message))
    assert entry is not None
    assert entry.attributes["pgaudit.parse_error"]
    assert entry.attributes["postgresql"]["message"] == message, "the message stays for a reader"
    assert entry.body == _jsonlog_line(message)
    assert "pgaudit.class" not in entry.attributes and "pgaudit_payload" not in entry.attributes
    assert entry.attributes["user.name"] == "app" and entry.attributes["db.namespace"] == "shop"


def test_a_line_that_is_not_json_is_kept_and_marked() -> None:
    truncated = _jsonlog_line("AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>,1")[:60]
    pipeline = Pipeline.from_config()
    entry = pipeline.run(truncated)
    assert entry is not None and entry.body == truncated
    assert entry.attributes["pgaudit.parse_error"] == "not a PostgreSQL jsonlog line"
    assert entry.resource == {"service.name": "postgresql"}
    assert pipeline.errors and pipeline.errors[0].startswith("jsonlog:"), "the collector would log it"


def test_pgaudit_without_log_rows_parses_with_nine_fields() -> None:
    # pgaudit's regression output (REL_15_STABLE), with log_rows off.
    message = (
        'AUDIT: SESSION,4,1,DDL,CREATE TABLE,TABLE,public.tmp,"CREATE TABLE tmp (id int, data text);",<not logged>'
    )
    entry = Pipeline.from_config().run(_jsonlog_line(message))
    assert entry is not None and "pgaudit.parse_error" not in entry.attributes
    assert entry.attributes["db.query.text"] == "CREATE TABLE tmp (id int, data text);"
    assert entry.attributes["db.collection.name"] == "public.tmp"
    assert "pgaudit.rows" not in entry.attributes


def test_malformed_lines_are_sealed_and_verify(
    run_sidecar: Callable[..., Any], tmp_path: Path, key_pair: KeyPairFiles
) -> None:
    pipeline = Pipeline.from_config()
    lines = [_jsonlog_line(m) for m in MALFORMED_AUDIT] + ["{not json"]
    entries = [pipeline.run(line) for line in lines]
    archived = seal_and_read_back(run_sidecar, tmp_path / "archive", key_pair, [e for e in entries if e])
    assert [a.record.body.string_value for a in archived] == lines
    assert all(a.attributes["pgaudit.parse_error"] for a in archived)


def test_the_interpreter_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="not interpreted"):
        OPERATOR_TYPES["move"]({"type": "move", "from": "body", "to": "body.x", "preserve_to": "x"})
    with pytest.raises(ValueError, match="unsupported expression"):
        Expression('attributes.x startsWith "a"')
    with pytest.raises(ValueError, match="EXPR"):
        OPERATOR_TYPES["add"]({"type": "add", "field": "attributes.x", "value": "EXPR(body)"})


def test_missing_postgresql_fails_and_names_the_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postgres.embedded_postgres, "BIN_DIR", tmp_path / "no-postgresql")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y postgresql-15 postgresql-15-pgaudit"):
        PostgresServer()
