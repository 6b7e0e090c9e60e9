"""Bridges to other libraries: PEFT adapter files, transformers training callbacks."""

from typing import Any

__all__ = ["LoraxTrainerCallback"]


def __getattr__(name: str) -> Any:
    # transformers is an optional dependency: imported only when the callback is asked for.
    if name == "LoraxTrainerCallback":
        from lorax_core.integrations.transformers import LoraxTrainerCallback

        return LoraxTrainerCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
