"""Kept for plugins written before the package layout (issue 25): the preference losses now live in
`semdpo_core.preference.losses`; import from there."""

from __future__ import annotations

import warnings

from semdpo_core.preference.losses import *  # noqa: F403 (the old module's names)
from semdpo_core.preference.losses import dpo_logits, semantic_weight  # noqa: F401

warnings.warn("semdpo_core.losses moved to semdpo_core.preference.losses", DeprecationWarning, stacklevel=2)
