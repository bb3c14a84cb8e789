"""Keep secrets out of logs, printed commands and saved configs.

One rule for every place that shows a user what ran: a config key, Hydra override or URL password that
looks like a credential is replaced by ``***`` before it is logged, printed or written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_KEY = re.compile(r"secret|password|passwd|token|access_key|credential|api_key|private_key", re.I)
MASKED = "***"


def mask_secrets(node: Any) -> Any:
    """A copy of a nested dict/list config with the values of secret-looking keys masked."""
    if isinstance(node, dict):
        return {
            k: MASKED if SECRET_KEY.search(str(k)) and v is not None else mask_secrets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [mask_secrets(v) for v in node]
    return node


def redact_url(url: str | None) -> str | None:
    """The URL with the password of its user-info part masked (``http://u:***@host``); others unchanged."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASKED}@{host}"))


def redact_arg(arg: str) -> str:
    """A command-line word with a secret-looking ``key=value`` value masked and URL passwords removed."""
    key, sep, value = arg.partition("=")
    if sep and SECRET_KEY.search(key.lstrip("+~")):
        return f"{key}={MASKED}"
    if "://" in arg:
        if sep:
            return f"{key}={redact_url(value)}"
        return redact_url(arg) or arg
    return arg


def redact_command(args: Iterable[str]) -> str:
    """A command line, joined for a log line, with every secret-looking word masked."""
    return " ".join(redact_arg(a) for a in args)
