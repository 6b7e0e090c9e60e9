"""Bridges to other libraries: PEFT adapter folders (:mod:`.peft`), transformers training
(:mod:`.transformers`: a callback for any lorax training hook, and the BiDoRA Trainer)."""

from typing import Any

__all__ = ["BiDoRATransformersTrainer", "LoraxTrainerCallback"]

_TRANSFORMERS_NAMES = ("BiDoRATransformersTrainer", "LoraxTrainerCallback")


def __getattr__(name: str) -> Any:
    # transformers is an optional dependency: imported only when one of its bridges is asked for.
    if name in _TRANSFORMERS_NAMES:
        from lorax_core.integrations import transformers

        return getattr(transformers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
