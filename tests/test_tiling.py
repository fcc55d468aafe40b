"""Tiled inference against one big patch, with stand-in 'networks' written in NumPy/SciPy."""
import numpy as np
import pytest
from scipy import ndimage, signal

from regnet import RegNetError
from regnet.tiling import (
    automatic_max_patch,
    plan_tiles,
    tiled_predict,
    valid_ceil,
    valid_floor,
)

PAD = -2048.0


class ConvNet:
    """A valid 3D convolution (2 channels -> 3): translation equivariant, shrinks by 2(R - Ry)."""

    def __init__(self, radius_in=7, radius_out=4, unit=4, seed=0):
        self.radius_in, self.radius_out, self.unit, self.pad_value = radius_in, radius_out, unit, PAD
        k = 2 * (radius_in - radius_out) + 1
        self.kernels = np.random.default_rng(seed).normal(size=(3, 2, k, k, k)) / (k ** 3 * 1000.0)
        self.calls = []

    def predict(self, x):
        self.calls.append(x.shape)
        assert x.dtype == np.float32 and x.ndim == 5 and x.shape[-1] == 2
        out = [[sum(signal.correlate(b[..., ch].astype(np.float64), self.kernels[c, ch], mode="valid",
                                     method="fft") for ch in range(2)) for c in range(3)] for b in x]
        return np.moveaxis(np.asarray(out), 1, -1).astype(np.float32)

    def whole(self, moving, fixed):
        """The single-pass answer: the volume padded by the margin with pad_value, valid convolution."""
        m = self.radius_in - self.radius_out
        x = np.stack([moving, fixed], -1).astype(np.float32)
        x = np.pad(x, [(m, m)] * 3 + [(0, 0)], constant_values=PAD)
        return self.predict(x[None])[0]


def smooth_pair(shape, seed=1):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.normal(size=shape), 2) * 3000 - 500
    b = ndimage.gaussian_filter(rng.normal(size=shape), 2) * 3000 - 500
    return a.astype(np.float32), b.astype(np.float32)


def test_valid_size_arithmetic():
    assert [valid_ceil(n, 21, 4) for n in (1, 21, 22, 25, 26)] == [21, 21, 25, 25, 29]
    assert [valid_floor(n, 21, 4) for n in (20, 21, 24, 25, 101 - 80)] == [None, 21, 21, 25, 21]


@pytest.mark.parametrize("blend", ["cosine", "gaussian", "constant"])
def test_tiles_equal_one_big_patch(blend):
    net = ConvNet()
    moving, fixed = smooth_pair((37, 45, 29))
    out, plan = tiled_predict(moving, fixed, net, max_patch=23, blend=blend, batch_size=5)
    assert [a.count for a in plan.axes] == [4, 5, 3] and plan.input_shape == (23, 23, 23)
    assert all(a.stride == 8 for a in plan.axes)  # default overlap of a valid network: >= two units (9)
    assert max(s[0] for s in net.calls) == 5 and all(s[1:4] == (23, 23, 23) for s in net.calls)
    ref = net.whole(moving, fixed)
    assert out.shape == (37, 45, 29, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 30, 2), (9, 9, 9)])
def test_image_smaller_than_a_patch_is_padded(shape):
    net = ConvNet(radius_in=8, radius_out=5, unit=4)   # smallest output 11, input 17
    moving, fixed = smooth_pair(shape, seed=3)
    out, plan = tiled_predict(moving, fixed, net, max_patch=40)
    assert plan.count == 1 and plan.tile_shape[0] == 11
    np.testing.assert_allclose(out, net.whole(moving, fixed), rtol=0, atol=1e-6)


def test_tiles_start_on_the_network_stride():
    """A strided 'network' (piecewise constant on blocks of `unit` aligned to its input) gives the
    same answer tiled as in one pass over the same padded frame only if tiles start on multiples of unit."""
    class Strided(ConvNet):
        def predict(self, x):
            m = self.radius_in - self.radius_out
            inner = x[:, m:x.shape[1] - m, m:x.shape[2] - m, m:x.shape[3] - m].sum(-1)
            idx = [np.arange(n) // 4 * 4 for n in inner.shape[1:]]
            blocky = inner[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]
            return np.repeat(blocky[..., None], 3, -1) * np.float32(1e-3)

    net = Strided(radius_in=6, radius_out=4, unit=4)
    moving, fixed = smooth_pair((40, 31, 26), seed=4)
    out, plan = tiled_predict(moving, fixed, net, max_patch=25, overlap=0.3)
    assert all(a.count > 1 for a in plan.axes) and all(a.stride % 4 == 0 for a in plan.axes)
    m = plan.margin
    frame = np.full([a.covered + 2 * m for a in plan.axes] + [2], PAD, np.float32)
    inside = tuple(slice(m + a.pad_before, m + a.pad_before + a.size) for a in plan.axes)
    frame[inside] = np.stack([moving, fixed], -1)
    whole = net.predict(frame[None])[0][tuple(slice(a.pad_before, a.pad_before + a.size) for a in plan.axes)]
    np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-3)


def test_full_image_network_same_size_output_multiple_of_8():
    class Pointwise:
        radius_in = radius_out = 3
        unit, size_base, pad_value = 8, 8, PAD

        def predict(self, x):
            assert all(n % 8 == 0 for n in x.shape[1:4])
            return np.stack([x[..., 0] - x[..., 1], 0.5 * x[..., 1], x[..., 0] * 1e-3], -1)

    moving, fixed = smooth_pair((20, 13, 30), seed=5)
    out, plan = tiled_predict(moving, fixed, Pointwise(), max_patch=16)
    assert plan.margin == 0 and plan.tile_shape == (16, 16, 16) and plan.count == 2 * 1 * 3
    expected = np.stack([moving - fixed, 0.5 * fixed, moving * 1e-3], -1)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)


def test_no_seams_with_a_network_that_differs_per_tile():
    """A 'network' whose output is a different constant for every tile (the worst case of border
    effects): blended, neighbouring voxels differ by at most a fifth of the tile-to-tile spread
    (overwriting tiles, as RegNet did, jumps by the whole spread)."""
    class PerTile(ConvNet):
        rng = np.random.default_rng(7)

        def predict(self, x):
            n = x.shape[1] - 2 * (self.radius_in - self.radius_out)
            c = self.rng.uniform(0, 10, size=(x.shape[0], 1, 1, 1, 1)).astype(np.float32)
            return np.broadcast_to(c, (x.shape[0], n, n, n, 3)).copy()

    moving, fixed = smooth_pair((30, 30, 30), seed=6)
    out, plan = tiled_predict(moving, fixed, PerTile(radius_in=6, radius_out=4), max_patch=25, overlap=9)
    assert plan.count == 8 and plan.axes[0].tile - plan.axes[0].stride == 9
    spread = out.max() - out.min()
    jump = max(np.abs(np.diff(out[..., 0], axis=k)).max() for k in range(3))
    assert spread > 3 and jump < 0.2 * spread
    assert np.all(np.isfinite(out))


def test_automatic_patch_from_memory():
    class Net(ConvNet):
        bytes_per_voxel = 2048

    assert automatic_max_patch(Net(), memory_bytes=8 << 30) == int((0.4 * (8 << 30) / 2048) ** (1 / 3))
    plan = plan_tiles((300, 400, 400), Net(radius_in=50, radius_out=10))
    assert all(n <= automatic_max_patch(Net()) for n in plan.input_shape) and plan.batch_size >= 1
    assert all((a.tile - 21) % 4 == 0 and a.covered >= a.size for a in plan.axes)


def test_bad_tiling_requests():
    net = ConvNet(radius_in=50, radius_out=10)
    with pytest.raises(RegNetError, match="--max-patch 90 is smaller than this model's smallest input 101"):
        plan_tiles((50, 50, 50), net, max_patch=90)
    with pytest.raises(RegNetError, match="Unknown blend 'hann'"):
        plan_tiles((50, 50, 50), net, blend="hann")

    class Wrong(ConvNet):
        def predict(self, x):
            return np.zeros((x.shape[0], 5, 5, 5, 3), np.float32)

    with pytest.raises(RegNetError, match=r"The model returned \(1, 5, 5, 5, 3\).*expected \(1, 9, 9, 9, 3\)"):
        tiled_predict(*smooth_pair((6, 6, 6)), Wrong())
    with pytest.raises(RegNetError, match="two 3D arrays of one shape"):
        tiled_predict(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), net)
