"""Type stubs of the Rust extension module ``lorax_core._core``.

Checked against the compiled module by ``python -m mypy.stubtest lorax_core._core``.
"""

__version__: str
