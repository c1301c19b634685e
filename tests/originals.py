"""The scorers' ORIGINAL code paths, importable beside today's libraries through test-only shims.

image-reward 1.5 and hpsv2 1.2.0 are installed with `--no-deps` for the tests (see the Makefile):
their pins (timm 0.6.13, protobuf<4, pytest 7.2) cannot live beside the current stack, and their
code needs the shims below to import. Nothing here changes what their model code computes: the
shims restore transformers helpers that version 5 removed (with the behaviour they had for the
arguments these models pass), stand in for imports the scoring path never calls, and point the
hpsv2 tokenizer at the CLIP BPE file its wheel forgot to ship (the same file open_clip ships).
"""

from __future__ import annotations

import gzip
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch


def _find_pruneable_heads_and_indices(heads, n_heads, head_size, already_pruned_heads):
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        mask[head - sum(1 for h in already_pruned_heads if h < head)] = 0
    mask = mask.view(-1).contiguous().eq(1)
    return heads, torch.arange(len(mask))[mask].long()


def _invert_attention_mask(self, encoder_attention_mask):
    """transformers 4's ModuleUtilsMixin.invert_attention_mask."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    """transformers 4's ModuleUtilsMixin.get_head_mask for head_mask=None (all the scorer passes)."""
    assert head_mask is None
    return [None] * num_hidden_layers


def stub(name: str, **attributes) -> None:
    """An empty module (and its parents) for an import the scoring path never uses."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    for key, value in attributes.items():
        setattr(sys.modules[name], key, value)


def bare_package(name: str) -> None:
    """Register package `name` without running its __init__, so submodules import alone."""
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise ImportError(f"No module named {name!r}")
        sys.modules[name] = importlib.util.module_from_spec(spec)


def image_reward():
    """The original `ImageReward` model module (image-reward 1.5), importable under transformers 5."""
    import transformers.modeling_utils as modeling_utils
    from transformers import pytorch_utils

    sys.modules.setdefault("clip", types.ModuleType("clip"))  # used only by its CLIP/Aesthetic baselines
    stub("fairscale.nn.checkpoint.checkpoint_activations", checkpoint_wrapper=None)  # gradient checkpointing only
    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
    if not hasattr(modeling_utils, "find_pruneable_heads_and_indices"):
        modeling_utils.find_pruneable_heads_and_indices = _find_pruneable_heads_and_indices
    try:
        bare_package("ImageReward")  # its __init__ also imports the ReFL trainer (datasets, old diffusers)
        from ImageReward import ImageReward
        from ImageReward.models.BLIP import med
    except ImportError as e:
        pytest.fail(f"the original image-reward package is not installed ({e}); run `make test`, which installs it")
    from transformers import BertTokenizer

    if "additional_special_tokens_ids" not in vars(BertTokenizer):  # transformers 5: extra_special_tokens
        BertTokenizer.additional_special_tokens_ids = property(
            lambda t: t.convert_tokens_to_ids(t.extra_special_tokens))
    med.BertModel.invert_attention_mask = _invert_attention_mask
    med.BertModel.get_head_mask = _get_head_mask
    if not hasattr(med.BertModel, "_semdpo_shimmed"):
        original_init = med.BertModel.__init__

        def init(self, *args, **kwargs):  # its BERT never calls post_init(), which transformers 5 requires
            with mock.patch.object(med.BertModel, "init_weights", lambda model: None):
                original_init(self, *args, **kwargs)
            self.post_init()  # initialises the weights as its init_weights() did, then the v5 bookkeeping

        med.BertModel.__init__ = init
        med.BertModel._semdpo_shimmed = True
    return ImageReward


@contextmanager
def hpsv2_open_clip():
    """hpsv2's own copy of open_clip (hpsv2 1.2.0), whose tokenizer reads a BPE file the wheel lacks."""
    import open_clip

    stub("clint.textui", progress=None)  # its download progress bar only
    missing = "hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz"
    shipped = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    real_open = gzip.open

    def gzip_open(path, *args, **kwargs):
        if str(path).replace("\\", "/").endswith(missing) and not Path(path).exists():
            path = shipped
        return real_open(path, *args, **kwargs)

    with mock.patch.object(gzip, "open", gzip_open):
        try:
            from hpsv2.src import open_clip as hps_open_clip
        except ImportError as e:
            pytest.fail(f"the original hpsv2 package is not installed ({e}); run `make test`, which installs it")
        yield hps_open_clip
