"""What every job shares: parse the stage config, run it, turn bad input into one-line errors."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

from tkre import layout, storage
from tkre.config import ConfigError, parse_args
from tkre.schema import DataError
from tkre.train.cluster import shutdown_ray

C = TypeVar("C")


def run_job(cls: type[C], main: Callable[[C], Any], argv: list[str] | None = None,
            description: str | None = None) -> int:
    """Parse argv into `cls`, call `main(cfg)` holding the run root's writer lock (when the
    config has a root); bad config, data or storage exits 2 with one line. Ctrl-C or SIGTERM
    stops Ray and exits 130 with one line: what finished is kept, a re-run resumes."""
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.signal(signal.SIGTERM, interrupt) if on_main else None
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
    except KeyboardInterrupt:
        shutdown_ray()
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, sigterm)
    return 0


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler, `ray job stop`, kill) stops a job the way Ctrl-C does."""
    raise KeyboardInterrupt
