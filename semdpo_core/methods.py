"""Kept for plugins written before the package layout (issue 25): the method registry now lives in
`semdpo_core.preference.methods`; import from there."""

from __future__ import annotations

import warnings

from semdpo_core.preference.methods import *  # noqa: F403 (the old module's names)
from semdpo_core.preference.methods import LossOutput, Method, PairBatch, get_method, register  # noqa: F401

warnings.warn("semdpo_core.methods moved to semdpo_core.preference.methods", DeprecationWarning, stacklevel=2)
