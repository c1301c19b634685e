"""Batches are sized to the GPU's free memory, and one that does not fit is split, with the same
results; where splitting would change the results (candidate sampling), the error says what to set."""

import logging

import numpy as np
import pytest
import torch

from semdpo_core.models.batching import (
    device_memory,
    fitting_batch_size,
    map_in_batches,
)
from semdpo_core.models.loading import load_diffusion
from semdpo_core.scorers import decode_png
from semdpo_core.stages.candidates import sample_candidates
from semdpo_core.stages.render import render_images

CPU = torch.device("cpu")


def fits(limit: int, calls: list[int]):
    """A step that runs out of memory on batches over `limit` items, recording every batch it is given."""

    def step(batch: slice) -> list[int]:
        calls.append(batch.stop - batch.start)
        if batch.stop - batch.start > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * i for i in range(batch.start, batch.stop)]

    return step


def test_batches_halve_on_out_of_memory_and_keep_order(caplog):
    calls: list[int] = []
    with caplog.at_level(logging.WARNING, logger="semdpo.batching"):
        out = map_in_batches(fits(3, calls), 11, 8, desc="render")
    assert out == [i * i for i in range(11)]
    assert calls == [8, 4, 2, 2, 2, 2, 2, 1]  # probes down once, then keeps the size that fitted
    assert "render: out of GPU memory with a batch of 8; continuing with 4" in caplog.text


class FakeGpu:
    """DeviceMemory of a GPU where an item peaks at `per_item` bytes and `free` bytes are free."""

    def __init__(self, per_item: int, free: int) -> None:
        self.per_item, self.free, self.started = per_item, free, 0

    def start_peak(self) -> None:
        self.started += 1

    def peak_bytes(self) -> int:
        return self.per_item

    def free_bytes(self) -> int:
        return self.free


def test_batches_are_sized_from_one_items_peak_and_the_free_memory(caplog):
    calls: list[int] = []
    gpu = FakeGpu(per_item=100, free=350)  # 90% of 350 holds 3 items
    with caplog.at_level(logging.INFO, logger="semdpo.batching"):
        out = map_in_batches(fits(8, calls), 11, 8, desc="render", unit="image", memory=gpu)
    assert out == [i * i for i in range(11)]
    assert calls == [1, 3, 3, 3, 1] and gpu.started == 1  # measured once, on a real item that is kept
    assert "render: one image takes" in caplog.text and "batches of 3 (batch_size 8 is the ceiling)" in caplog.text


def test_sizing_keeps_the_ceiling_and_halving_still_catches_a_wrong_estimate():
    calls: list[int] = []
    map_in_batches(fits(8, calls), 10, 4, desc="score", memory=FakeGpu(per_item=1, free=10**9))
    assert calls == [1, 4, 4, 1]  # plenty of memory: the configured batch_size caps it
    calls = []
    map_in_batches(fits(2, calls), 12, 8, desc="score", memory=FakeGpu(per_item=10, free=100))
    assert calls == [1, 8, 4, 2, 2, 2, 2, 2, 1]  # the estimate (9 capped at 8) was too high: halved from there


def test_fitting_batch_size_bounds():
    assert fitting_batch_size(per_item_bytes=2**30, free_bytes=40 * 2**30, ceiling=64) == 36
    assert fitting_batch_size(per_item_bytes=2**30, free_bytes=2**29, ceiling=64) == 1
    assert fitting_batch_size(per_item_bytes=0, free_bytes=0, ceiling=16) == 16
    assert device_memory(CPU) is None and device_memory("cpu") is None  # off CUDA memory sets no size


def test_out_of_memory_with_one_item_is_a_clear_error():
    with pytest.raises(RuntimeError, match="render: out of GPU memory with a batch of 1"):
        map_in_batches(fits(0, []), 3, 2, desc="render")


def test_a_short_batch_result_is_an_error():
    with pytest.raises(RuntimeError, match="a batch of 2 items gave 1 results"):
        map_in_batches(lambda batch: [0], 2, 2, desc="score")


def test_split_render_batches_give_the_same_images_up_to_rounding():
    pipe = load_diffusion("tiny:stable-diffusion", CPU)
    prompts, seeds = ["a red fox", "a blue lake", "an old tower", "a snowy road"], [11, 12, 13, 14]
    settings = dict(num_inference_steps=2, guidance_scale=7.5, height=64, width=64)
    reference = render_images(pipe, prompts, seeds, batch_size=1, **settings)

    class SmallGpu:  # the same pipeline, out of memory above two prompts
        device = pipe.device

        def __call__(self, batch_prompts, **kwargs):
            if len(batch_prompts) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return pipe(batch_prompts, **kwargs)

    split = render_images(SmallGpu(), prompts, seeds, batch_size=4, **settings)
    pixels = lambda png: np.asarray(decode_png(png), dtype=int)  # noqa: E731
    # batched kernels round differently (at most one level here); a seed not applied per image would differ wholesale
    assert max(np.abs(pixels(a) - pixels(b)).max() for a, b in zip(split, reference, strict=True)) <= 1


def test_candidate_sampling_out_of_memory_names_the_setting(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("semdpo_core.stages.candidates.generate", out_of_memory)
    with pytest.raises(RuntimeError, match=r"set candidates.batch_size below 16 \(it is part of the sampling seed"):
        sample_candidates(None, None, ["p1"], ["a fox"], num_candidates=2, temperature=1.0, top_p=0.9,
                          max_new_tokens=8, batch_size=16, seed=0)
