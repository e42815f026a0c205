"""Training data: the three real-image sources, the batch stream (resume- and DDP-friendly), augmentation."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from ccfast.errors import CCFastError
from ccfast.training.datasets import AugmentDraw, BatchStream, augment, load_labelled, rank_slice, split_holdout


def _images(n, size=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_npz_sources_in_both_layouts_concatenate(tmp_path):
    a, b = _images(5), _images(3, seed=1)
    np.savez(tmp_path / "a.npz", images=a, labels=np.arange(5))
    np.savez(tmp_path / "b.npz", arr_0=b, arr_1=np.array([7, 8, 9]))
    out = load_labelled([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], "real")
    assert np.array_equal(out.images, np.concatenate([a, b]))
    assert out.labels.tolist() == [0, 1, 2, 3, 4, 7, 8, 9] and out.labels.dtype == np.int64


def _imagenet_batch(images, labels_1based):
    """Downsampled-ImageNet layout: rows of planar R, G, B values; labels from 1."""
    return {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1).copy(), "labels": list(labels_1based),
            "mean": np.zeros(images[0].size)}


def test_downsampled_imagenet_pickles_npz_and_folders(tmp_path):
    a, b = _images(4, size=8), _images(2, size=8, seed=3)
    with open(tmp_path / "train_data_batch_1", "wb") as fh:
        pickle.dump(_imagenet_batch(a, [1, 2, 3, 1000]), fh, protocol=2)
    with open(tmp_path / "train_data_batch_2", "wb") as fh:
        pickle.dump(_imagenet_batch(b, [5, 6]), fh)
    one = load_labelled([str(tmp_path / "train_data_batch_1")], "real")
    assert np.array_equal(one.images, a)  # planar order undone exactly
    assert one.labels.tolist() == [0, 1, 2, 999]  # 1-based -> 0-based
    folder = load_labelled([str(tmp_path)], "real")
    assert np.array_equal(folder.images, np.concatenate([a, b])) and folder.labels.tolist() == [0, 1, 2, 999, 4, 5]
    np.savez(tmp_path / "val.npz", **{k: np.asarray(v) for k, v in _imagenet_batch(b, [5, 6]).items()})
    assert load_labelled([str(tmp_path / "val.npz")], "real").labels.tolist() == [4, 5]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_reader_refuses_anything_but_arrays(tmp_path):
    path = tmp_path / "val_data"
    with open(path, "wb") as fh:
        pickle.dump({"data": _Exploit(), "labels": [1]}, fh)
    with pytest.raises(CCFastError, match="refusing to load"):
        load_labelled([str(path)], "real")


def test_class_folders(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    imgs = _images(3, size=6)
    for name, idx in (("cat", [0, 1]), ("ant", [2])):  # classes numbered in sorted name order: ant=0, cat=1
        (tmp_path / name).mkdir()
        for i in idx:
            pil.fromarray(imgs[i]).save(tmp_path / name / f"{i}.png")
    out = load_labelled([str(tmp_path)], "real")
    assert out.labels.tolist() == [0, 1, 1]
    assert np.array_equal(out.images, imgs[[2, 0, 1]])
    (tmp_path / "empty").mkdir()
    (tmp_path / "cat" / "0.png").unlink(), (tmp_path / "cat" / "1.png").unlink(), (tmp_path / "ant" / "2.png").unlink()
    with pytest.raises(CCFastError, match="no image files"):
        load_labelled([str(tmp_path)], "real")


def test_sources_of_different_sizes_are_refused(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(2, size=4), labels=np.zeros(2, int))
    np.savez(tmp_path / "b.npz", images=_images(2, size=6), labels=np.zeros(2, int))
    with pytest.raises(CCFastError, match="different sizes"):
        load_labelled([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")], "real")


def test_holdout_is_disjoint_and_seeded(tmp_path):
    from ccfast.training.datasets import LabelledImages

    imgs = LabelledImages(_images(20), np.arange(20), ["x"])
    train, held = split_holdout(imgs, 5, seed=3)
    assert len(train) == 15 and len(held) == 5
    assert train.images is imgs.images  # the training set is a view, never a copy of a large array
    train_labels = train.take(np.arange(15))[1]
    assert sorted(train_labels.tolist() + held.labels.tolist()) == list(range(20))
    assert np.array_equal(train.take(np.array([2]))[0][0], imgs.images[train_labels[2]])
    assert split_holdout(imgs, 5, seed=3)[1].labels.tolist() == held.labels.tolist()
    with pytest.raises(CCFastError, match="hold out"):
        split_holdout(imgs, 20, seed=0)


def test_batch_stream_covers_each_epoch_once_and_is_a_pure_function_of_t():
    stream = BatchStream(10, 4, seed=1, stream=1)
    flat = torch.cat([stream.global_batch(t) for t in range(5)])  # 20 positions = 2 epochs, batches straddle them
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:])  # a new permutation each epoch
    fresh = BatchStream(10, 4, seed=1, stream=1)
    assert torch.equal(fresh.global_batch(3), stream.global_batch(3))  # no hidden state: resume-safe
    assert not torch.equal(BatchStream(10, 4, seed=1, stream=2).global_batch(0), stream.global_batch(0))
    small = BatchStream(3, 8, seed=0, stream=1)  # a set smaller than one batch still works
    assert len(small.global_batch(0)) == 8


def test_rank_slices_partition_the_global_batch():
    parts = [rank_slice(12, r, 3) for r in range(3)]
    covered = [i for s in parts for i in range(12)[s]]
    assert covered == list(range(12))


def test_augment_flip_and_crop():
    x = torch.rand(3, 3, 8, 8)
    draw = AugmentDraw(flip=torch.tensor([True, False, False]), shift=torch.tensor([[1, 1], [1, 1], [0, 2]]))
    flipped = augment(x, "flip", draw)
    assert torch.equal(flipped[0], x[0].flip(2)) and torch.equal(flipped[1:], x[1:])
    cropped = augment(x, "crop-flip", draw)  # pad 1 at 8×8: shift (1, 1) is the identity crop
    assert torch.equal(cropped[1], x[1])
    padded = torch.nn.functional.pad(x[2:3], (1, 1, 1, 1), mode="reflect")[0]
    assert torch.equal(cropped[2], padded[:, 0:8, 2:10])
    assert augment(x, "none", draw) is x
