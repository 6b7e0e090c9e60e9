"""lorax_core — adaptive, efficient LoRA fine-tuning for PyTorch with a Rust core.

The public API is re-exported here; each method lives in its own subpackage.
"""

from lorax_core._core import __version__

__all__ = ["__version__"]
