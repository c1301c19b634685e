"""A method from outside the project, as a user's plugin module (`plugins: [tests.plugin_methods]`):
SLiC's hinge on the DPO margin. Imported by the config in the test's own processes only."""

import torch

from semdpo_core.preference.losses import dpo_logits
from semdpo_core.preference.methods import LossOutput, Method, register


def slic(batch, settings, state) -> LossOutput:
    margin = dpo_logits(batch.chosen_logps, batch.rejected_logps, batch.reference_chosen_logps,
                        batch.reference_rejected_logps)
    return LossOutput(torch.relu(1 - settings.beta * margin))


register(Method("slic", slic, "max(0, 1 - beta * margin)"))
