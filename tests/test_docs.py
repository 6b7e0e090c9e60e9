"""The documentation runs: every ```python block of README.md and docs/*.md is a test.

Each block runs on its own, in a fresh namespace and a temporary working directory, so a block
must be complete: its imports, its data (from ``lorax_core.datasets`` or ``lorax_core.synthetic``)
and every name it uses. A block may be skipped only when it needs something a CPU test run does
not have (a GPU, several processes); it says so with an HTML comment on the line before it::

    <!-- docs-test: skip (needs a GPU) -->

or with a word after the language in its info string (```` ```python skip-gpu ````). The reason
appears in pytest's skip report.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SKIP_COMMENT = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block: where it starts (1-based line of its first code line), its code,
    and why it is skipped (``None`` when it runs)."""

    path: Path
    line: int
    code: str
    skip: str | None

    def __str__(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_absolute() else self.path
        return f"{path}:{self.line}"


def _skip_reason(info_words: list[str], previous: str) -> str | None:
    marker = _SKIP_COMMENT.match(previous)
    if marker:
        return marker.group("reason") or "marked to skip"
    for word in info_words[1:]:
        if word.startswith("skip"):
            reason = word[len("skip") :].lstrip("-:") or "marked to skip"
            return f"needs {reason}" if "-" in word else reason
    return None


def python_blocks(text: str, path: Path) -> Iterator[CodeBlock]:
    """The ```python blocks of the markdown ``text`` (other languages are ignored)."""
    lines = text.splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence, words = opening.group("fence"), opening.group("info").split()
        start = i + 1
        end = start
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if closing and closing.group("fence").startswith(fence) and not closing.group("info"):
                break
            end += 1
        if words and words[0] == "python":
            code = textwrap.dedent("\n".join(lines[start:end]))
            yield CodeBlock(path, start + 1, code + "\n", _skip_reason(words, previous))
        previous = ""
        i = end + 1


def _all_blocks() -> list[CodeBlock]:
    return [
        block
        for path in DOC_FILES
        if path.is_file()
        for block in python_blocks(path.read_text(encoding="utf-8"), path)
    ]


BLOCKS = _all_blocks()


def test_parser_finds_blocks_and_skip_markers() -> None:
    text = "\n".join(
        [
            "# Title",
            "```bash",
            "echo not python",
            "```",
            "```python",
            "x = 1",
            "```",
            "<!-- docs-test: skip (needs a GPU) -->",
            "",
            "```python",
            "import torch; torch.zeros(1, device='cuda')",
            "```",
            "````python skip-gpu",
            "```",
            "````",
            "- item:",
            "  ```python",
            "  y = 2",
            "  ```",
        ]
    )
    blocks = list(python_blocks(text, Path("doc.md")))
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (6, "x = 1\n", None),
        (11, "import torch; torch.zeros(1, device='cuda')\n", "needs a GPU"),
        (14, "```\n", "needs gpu"),
        (18, "y = 2\n", None),
    ]


def test_readme_has_runnable_blocks() -> None:
    readme = [b for b in BLOCKS if b.path.name == "README.md" and b.path.parent == ROOT]
    assert readme, "README.md has no python blocks"
    assert all(b.skip is None for b in readme), [str(b) for b in readme if b.skip]


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """Targets of the markdown links in ``text`` that point inside the repository (no scheme,
    no pure anchor), without their ``#anchor``."""
    targets = (m.group("target") for m in _LINK.finditer(text))
    return [t.split("#")[0] for t in targets if "://" not in t and not t.startswith("#")]


def test_relative_links_parsed() -> None:
    text = "[a](docs/a.md) [b](https://x.org/b.md) [c](#top) [d](../README.md#set-up)"
    assert relative_links(text) == ["docs/a.md", "../README.md"]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path) -> None:
    missing = [
        target
        for target in relative_links(path.read_text(encoding="utf-8"))
        if not (path.parent / target).exists()
    ]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_block_runs(block: CodeBlock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
    code = compile(block.code, str(block), "exec")
    exec(code, {"__name__": "__docs__"})
