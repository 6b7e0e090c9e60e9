"""PEFT interoperability: export lorax_core adapters as PEFT LoRA/DoRA adapter folders
(:mod:`.export`), import them back (:mod:`.importing`); the folder format is :mod:`.format`
(docs/peft-interop.md)."""

from lorax_core.integrations.peft.export import export_peft
from lorax_core.integrations.peft.format import CONFIG_NAME, MODES, WEIGHTS_NAME
from lorax_core.integrations.peft.importing import import_peft

__all__ = ["CONFIG_NAME", "MODES", "WEIGHTS_NAME", "export_peft", "import_peft"]
