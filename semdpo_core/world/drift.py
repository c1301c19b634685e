"""A controlled dose of drift for the drift study (issue 23): for a share of the training prompts,
one more candidate that changes what the prompt asks for, built from one of the SFT rewriter's own
samples by moving its setting to another one. The candidates stage adds it to the pool; the
unchanged renderer draws it from the prompt's seed and the unchanged labeller scores it, so the
labeller, not the study, decides whether it becomes the chosen rewrite.

Two kinds, by what Sem-DPO's encoder can see:
- `replace`: the setting's words are replaced ("a red fox in the desert" -> "a red fox in a
  forest"): all-MiniLM-L6-v2 puts such a rewrite far from its prompt;
- `append`: another setting is appended ("a red fox in the desert, in a forest"): the world reads
  the last setting, so the image changes as much, but the encoder puts it close to its prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from semdpo_core.pipeline.seeds import derive_seed
from semdpo_core.world.grammar import SETTING_INDEX, SETTINGS, content_words, parse

KINDS = ("replace", "append")
INJECTED_SUFFIX = "-drift"  # an injected candidate's id: `<prompt id>-drift`
UNIFORM_BITS = 31  # derive_seed's range: a prompt's draw is derive_seed / 2**31, uniform in [0, 1)


@dataclass(frozen=True)
class Injected:
    """One injected candidate: the sample it was built from, the rewrite, and the setting moved."""

    source: str
    rewrite: str
    setting: str
    new_setting: str


def is_dosed(seed: int, prompt_id: str, share: float) -> bool:
    """Whether a training prompt gets an injected candidate: its own uniform draw falls below `share`,
    so a prompt dosed at a share is dosed at every larger one (doses are nested)."""
    return derive_seed(seed, f"drift:{prompt_id}") / 2**UNIFORM_BITS < share


def other_setting(seed: int, prompt_id: str, setting: str) -> str:
    """The setting a prompt's injected candidate moves to: one of the other seven, drawn per prompt."""
    others = [s.name for s in SETTINGS if s.name != setting]
    return others[derive_seed(seed, f"drift-setting:{prompt_id}") % len(others)]


def setting_phrase(setting: str, seed: int, prompt_id: str) -> str:
    """One of the setting's surface phrases ("in a forest"), drawn per prompt."""
    phrases = SETTINGS[SETTING_INDEX[setting]].phrases
    return phrases[derive_seed(seed, f"drift-phrase:{prompt_id}") % len(phrases)]


def surface_forms(setting: str) -> list[str]:
    """Every way a rewrite may name the setting, longest first: its phrases, then its bare names."""
    kind = SETTINGS[SETTING_INDEX[setting]]
    return sorted({*kind.phrases, kind.name, *kind.synonyms}, key=lambda form: (-len(form), form))


def replace_setting(rewrite: str, setting: str, phrase: str) -> str | None:
    """The rewrite with the first mention of `setting` replaced by `phrase` (a bare name by the
    phrase's last words), or None when the rewrite does not name it."""
    for form in surface_forms(setting):
        match = re.search(rf"\b{re.escape(form)}\b", rewrite, flags=re.IGNORECASE)
        if match:
            new_words = phrase if form in SETTINGS[SETTING_INDEX[setting]].phrases else bare(phrase)
            return rewrite[: match.start()] + new_words + rewrite[match.end():]
    return None


def bare(phrase: str) -> str:
    """A phrase without its preposition and article ("in a forest" -> "forest")."""
    words = phrase.split()
    while words and words[0] in {"in", "on", "at", "by", "near", "over", "under", "a", "an", "the"}:
        words = words[1:]
    return " ".join(words)


def drifted(prompt_id: str, prompt: str, samples: list[str], kind: str, seed: int) -> Injected | None:
    """The injected candidate for one prompt: its first sample that keeps every content word of the
    prompt, with its setting moved (`kind`), so that the setting is all it loses; None when the
    prompt has no setting or no sample keeps its content."""
    if kind not in KINDS:
        raise ValueError(f"candidates.inject.kind: {kind!r} is not one of {', '.join(KINDS)}")
    setting = parse(prompt).setting
    if setting is None:
        return None
    new = other_setting(seed, prompt_id, setting)
    phrase = setting_phrase(new, seed, prompt_id)
    content = content_words(prompt)
    for sample in samples:
        if parse(sample).setting != setting or not content <= content_words(sample):
            continue
        rewrite = replace_setting(sample, setting, phrase) if kind == "replace" else f"{sample}, {phrase}"
        if rewrite is not None and parse(rewrite).setting == new:
            return Injected(sample, rewrite, setting, new)
    return None
