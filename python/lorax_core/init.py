"""Adapter initialisers (``nlora``, ``nystrom``, ``pissa``); they live in
:mod:`lorax_core.adapters.init`, re-exported here under their former path."""

from lorax_core.adapters.init import (
    INIT_METHODS,
    RESIDUAL_INITS,
    initialize,
    initialize_model,
    nlora,
    nystrom,
    pissa,
)

__all__ = [
    "INIT_METHODS",
    "RESIDUAL_INITS",
    "initialize",
    "initialize_model",
    "nlora",
    "nystrom",
    "pissa",
]
