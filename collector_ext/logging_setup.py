"""The sidecar's own structured logs: one JSON object per line on stderr.

Fields passed with ``extra=`` become JSON keys. Record contents are never logged at INFO or above,
and nothing here ever sees key material: key files are parsed in ``seal.keys``, whose errors name
the file only.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore and grpc are chatty at INFO and may echo request details.
    for noisy in ("botocore", "aiobotocore", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
