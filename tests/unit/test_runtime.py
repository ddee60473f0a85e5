"""Device choice: a job given GPUs that torch cannot use says so once, then runs on the CPU."""

from __future__ import annotations

import pytest
import torch

from hpaflow.runtime import pick_device, use_threads

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


@pytest.mark.parametrize(
    "visible,warns", [("0", True), ("1,3", True), (None, False), ("", False), ("NoDevFiles", False), ("-1", False)]
)
def test_auto_without_cuda(monkeypatch, caplog, visible, warns):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with caplog.at_level("WARNING", logger="hpaflow"):
        assert pick_device("auto") == torch.device("cpu")
    messages = [r.getMessage() for r in caplog.records]
    assert bool(messages) == warns, messages
    if warns:
        assert messages[0].startswith(f"this job was given GPU(s) (CUDA_VISIBLE_DEVICES={visible}) but torch")
        assert messages[0].endswith("finds no usable CUDA device: running on the CPU")


def test_cuda_asked_for_without_one_is_an_error():
    with pytest.raises(RuntimeError, match="device: cuda was asked for"):
        pick_device("cuda")


def test_use_threads_gives_torch_the_threads_and_returns_the_loader_workers():
    before = torch.get_num_threads()
    try:
        assert use_threads(3) == 2 and torch.get_num_threads() == 3
        assert use_threads(1) == 0 and torch.get_num_threads() == 1
        assert use_threads(0) == 0 and torch.get_num_threads() == 1  # at least one thread
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "n,train,sizes",
    [
        (9, True, [4, 4]),  # a last batch of one cannot train BatchNorm: left out
        (10, True, [4, 4, 2]),
        (9, False, [4, 4, 1]),  # scoring keeps every image
        (1, True, [1]),  # one image is all there is
    ],
)
def test_training_batches_never_end_with_a_single_image(n, train, sizes):
    from hpaflow.train import loader

    assert [len(b) for b in loader(list(range(n)), 4, 0, train=train)] == sizes
    sampler = torch.utils.data.SequentialSampler(range(n))
    assert [len(b) for b in loader(list(range(n)), 4, 0, sampler, train=train)] == sizes
