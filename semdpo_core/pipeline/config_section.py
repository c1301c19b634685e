"""The base of every config section, and the settings types that several sections share.

Its own module so that the method registry (`semdpo_core.preference.methods`), which declares each method's
section, and the config (`semdpo_core.pipeline.config`), which reads the registry, import it without
importing each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# training arithmetic (semdpo_core.preference.optim.mixed_precision)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISION_HELP = "auto: bf16/fp16 on CUDA, fp32 on CPU; bf16/fp16 by name on any device"


class Section(BaseModel):
    """A config section: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
