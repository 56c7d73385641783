"""tkre: few-shot relation extraction (TKRE) on Ray.

    from tkre import Extractor
    Extractor.load("runs/demo").extract_text("Ada Lovelace was born in London.")

`Extractor` is imported on first use, so `import tkre.config` (and every job's start) does not
pay for torch and transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Extractor"]


def __getattr__(name: str) -> Any:
    if name == "Extractor":
        from tkre.extract.extractor import Extractor

        return Extractor
    raise AttributeError(f"module 'tkre' has no attribute {name!r}")
