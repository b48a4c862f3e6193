import numpy as np
import pytest
import torch
import torch.nn.functional as F

from memscan.data.loader import batch_bounds, InMemorySource, augment_batch, batch_slices, channel_stats, epoch_order


# --------------------------------------------------------------------------- order and batches

def test_epoch_order_is_a_deterministic_permutation():
    o = epoch_order(100, seed=3, epoch=0)
    assert sorted(o.tolist()) == list(range(100))
    assert torch.equal(o, epoch_order(100, seed=3, epoch=0))
    assert not torch.equal(o, epoch_order(100, seed=3, epoch=1))
    assert not torch.equal(o, epoch_order(100, seed=4, epoch=0))
    assert o.tolist() != list(range(100))


def test_epoch_orders_differ_across_many_epochs():
    orders = {tuple(epoch_order(50, seed=0, epoch=e).tolist()) for e in range(20)}
    assert len(orders) == 20


def test_epoch_order_not_affected_by_global_rng():
    torch.manual_seed(1)
    a = epoch_order(30, 7, 2)
    torch.manual_seed(2)
    torch.rand(10)
    assert torch.equal(a, epoch_order(30, 7, 2))


@pytest.mark.parametrize("n,bs", [(10, 3), (12, 4), (1, 5), (7, 7)])
def test_batch_slices_cover_every_index_once(n, bs):
    order = epoch_order(n, 0, 0)
    batches = list(batch_slices(order, bs))
    assert all(1 <= len(b) < bs + 2 for b in batches)  # a tail under 2 is folded into the last batch
    assert all(len(b) >= 2 for b in batches) or n < 2
    assert len(batches) == len(batch_bounds(n, bs))
    flat = torch.cat(batches).tolist()
    assert flat == order.tolist()          # in epoch order
    assert sorted(flat) == list(range(n))


@pytest.mark.parametrize("n,bs", [(20, 4), (21, 4), (9, 2), (3, 8)])
def test_two_ranks_are_disjoint_and_cover_everything(n, bs):
    order = epoch_order(n, 5, 1)
    r0 = list(batch_slices(order, bs, rank=0, world=2))
    r1 = list(batch_slices(order, bs, rank=1, world=2))
    a = torch.cat(r0).tolist()
    b = torch.cat(r1).tolist() if r1 else []
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(n))
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert all(len(x) < bs + 2 for x in r0 + r1)  # tail of < 2 per rank folded in
    assert len(r0) == len(r1)  # every rank runs the same number of steps
    # a global batch is split evenly: rank sizes within one sample of each other
    for x, y in zip(r0, r1):
        assert abs(len(x) - len(y)) <= 1


# --------------------------------------------------------------------------- augmentation

def _windows(img: np.ndarray, pad: int):
    """All (oy, ox) windows of the reflect-padded CHW image."""
    c, h, w = img.shape
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    return {(oy, ox): p[:, oy:oy + h, ox:ox + w] for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)}


def _rand_images(b=16, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, s, s), generator=g, dtype=torch.uint8)


def test_augment_keeps_shape_and_dtype():
    x = _rand_images()
    for flip in (True, False):
        out = augment_batch(x, flip=flip, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == torch.uint8
        assert out.is_contiguous()
    xf = x.float()
    assert augment_batch(xf, flip=True, generator=torch.Generator().manual_seed(0)).dtype == torch.float32


def test_augment_deterministic_with_fixed_generator():
    x = _rand_images()
    a = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(11))
    b = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(11))
    c = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_crops_are_windows_of_reflect_padded_input_without_flip():
    x = _rand_images(b=24, s=8, seed=1)
    out = augment_batch(x, flip=False, generator=torch.Generator().manual_seed(3))
    pad = 1   # round(8 / 8)
    offsets = []
    for i in range(len(x)):
        wins = _windows(x[i].numpy(), pad)
        hits = [k for k, win in wins.items() if np.array_equal(win, out[i].numpy())]
        assert hits, f"sample {i} is not a window of the padded input (flip=False must never flip)"
        offsets.append(hits[0])
    assert len(set(offsets)) > 3          # offsets really vary over the batch


def test_crops_with_flip_are_windows_or_mirrored_windows():
    x = _rand_images(b=32, s=16, seed=2)
    pad = 5
    out = augment_batch(x, flip=True, generator=torch.Generator().manual_seed(4), pad=pad)
    flips = 0
    for i in range(len(x)):
        o = out[i].numpy()
        wins = _windows(x[i].numpy(), pad)
        plain = any(np.array_equal(w, o) for w in wins.values())
        mirrored = any(np.array_equal(w[:, :, ::-1], o) for w in wins.values())
        assert plain or mirrored, i
        flips += mirrored and not plain
    assert 4 <= flips <= 28      # about half of 32 are flipped


def test_one_sample_brute_force_matches_torch_reflect_pad():
    x = _rand_images(b=1, s=8, seed=9)
    out = augment_batch(x, flip=False, generator=torch.Generator().manual_seed(0), pad=3)
    padded = F.pad(x.float(), (3, 3, 3, 3), mode="reflect")[0].to(torch.uint8).numpy()
    found = [(oy, ox) for oy in range(7) for ox in range(7)
             if np.array_equal(padded[:, oy:oy + 8, ox:ox + 8], out[0].numpy())]
    assert len(found) == 1


# --------------------------------------------------------------------------- InMemorySource

def test_in_memory_source_normalises_with_mean_std():
    imgs = np.zeros((3, 3, 2, 2), np.uint8)
    imgs[:, 0] = 255
    imgs[:, 1] = 51
    imgs[1, 2] = 102
    labels = np.array([2, 0, 1])
    mean, std = [0.5, 0.2, 0.0], [0.5, 0.1, 0.4]
    src = InMemorySource(imgs, labels, mean=mean, std=std)
    assert len(src) == 3 and src.image_size == 2
    x, y = src.batch(torch.tensor([1, 2]))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    assert y.tolist() == [0, 1] and y.dtype == torch.long
    # channel 0: (255/255 - 0.5)/0.5 = 1; channel 1: (51/255 - 0.2)/0.1 = 0; channel 2: (102/255)/0.4 = 1, 0
    torch.testing.assert_close(x[:, 0], torch.ones(2, 2, 2))
    torch.testing.assert_close(x[:, 1], torch.zeros(2, 2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[0, 2], torch.ones(2, 2))
    torch.testing.assert_close(x[1, 2], torch.zeros(2, 2))


def test_in_memory_source_channels_last_same_values():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 3, 6, 6), dtype=np.uint8)
    kw = dict(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    a, _ = InMemorySource(imgs, np.arange(4), **kw).batch(torch.arange(4))
    b, _ = InMemorySource(imgs, np.arange(4), channels_last=True, **kw).batch(torch.arange(4))
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert not a.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b)
    expect = (imgs[:, 1].astype(np.float64) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(a[:, 1].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_in_memory_source_augment_modes():
    imgs = np.random.default_rng(1).integers(0, 256, (8, 3, 8, 8), dtype=np.uint8)
    src = InMemorySource(imgs, np.zeros(8), mean=[0, 0, 0], std=[1, 1, 1])
    plain, _ = src.batch(torch.arange(8))
    torch.testing.assert_close(plain * 255, torch.from_numpy(imgs).float(), atol=1e-3, rtol=0)
    a, _ = src.batch(torch.arange(8), augment="crop", generator=torch.Generator().manual_seed(0))
    b, _ = src.batch(torch.arange(8), augment="crop", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, plain)
    ref = augment_batch(torch.from_numpy(imgs), flip=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a * 255, ref.float(), atol=1e-3, rtol=0)


def test_channel_stats():
    imgs = np.zeros((2, 3, 2, 2), np.uint8)
    imgs[0, 0] = 255          # channel 0: half 1.0, half 0.0 -> mean .5, std .5
    imgs[:, 1] = 51           # channel 1: constant 0.2 -> std floored at 1e-3
    mean, std = channel_stats(imgs)
    np.testing.assert_allclose(mean, [0.5, 0.2, 0.0])
    np.testing.assert_allclose(std, [0.5, 1e-3, 1e-3])
