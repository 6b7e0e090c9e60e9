"""Adapter initialisers (``nlora``, ``nystrom``, ``pissa``); they live in
:mod:`lorax_core.adapters.init`, re-exported here under their former path."""

from lorax_core.adapters import init as _home
from lorax_core.adapters.init import *  # noqa: F403

__all__ = list(_home.__all__)
