"""What every job shares: parse the stage config, run it, turn bad input into one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from tkre.config import ConfigError, parse_args
from tkre.schema import DataError

C = TypeVar("C")


def run_job(cls: type[C], main: Callable[[C], Any], argv: list[str] | None = None,
            description: str | None = None) -> int:
    """Parse argv into `cls`, call `main(cfg)`; bad config or data exits 2 with one line."""
    try:
        cfg = parse_args(cls, argv, description)
        main(cfg)
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
