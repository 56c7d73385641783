"""What every job shares: parse the stage config, run it, turn bad input into one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from tkre import layout, storage
from tkre.config import ConfigError, parse_args
from tkre.schema import DataError

C = TypeVar("C")


def run_job(cls: type[C], main: Callable[[C], Any], argv: list[str] | None = None,
            description: str | None = None) -> int:
    """Parse argv into `cls`, call `main(cfg)` holding the run root's writer lock (when the
    config has a root); bad config, data or storage exits 2 with one line."""
    try:
        cfg = parse_args(cls, argv, description)
        root = getattr(cfg, "root", None)
        with layout.writing(root) if root else nullcontext():
            main(cfg)
    except (ConfigError, DataError, storage.StorageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        problem = storage.s3_problem(err)  # credentials, endpoint, bucket: the user's to fix
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0
