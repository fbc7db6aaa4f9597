"""ImageEncoder: checkpoint layout and strict loading, random-weights warning, determinism, architecture."""
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from poco_policy.encoder import EncoderConfig, ImageEncoder, expected_checkpoint_keys

SIZE = 64  # small images keep the tests fast; the network is fully convolutional


def images(n, seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def enc():
    return ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=64))


def make_checkpoint(path, prefix='', extra=None, drop=(), seed=1):
    """A checkpoint in the documented torchvision layout, with non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in expected_checkpoint_keys().items():
        if k.endswith('running_var'):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(('running_mean', 'bias')):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    sd['fc.weight'] = torch.randn(1000, 512, generator=g)          # classifier head: ignored
    sd['fc.bias'] = torch.zeros(1000)
    sd['bn1.num_batches_tracked'] = torch.tensor(7)                 # ignored
    for k in drop:
        del sd[k]
    sd.update(extra or {})
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


def reference_trunk(sd, x):
    """Independent functional ResNet-10 forward straight from the state dict (checks the module wiring)."""
    def bn(y, p):
        return F.batch_norm(y, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                            False, 0.0, 1e-5)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), 'bn1')), 3, 2, 1)
    outs = []
    for i, stride in zip(range(1, 5), (1, 2, 2, 2)):
        p = f'layer{i}.0.'
        y = F.relu(bn(F.conv2d(x, sd[p + 'conv1.weight'], stride=stride, padding=1), p + 'bn1'))
        y = bn(F.conv2d(y, sd[p + 'conv2.weight'], padding=1), p + 'bn2')
        skip = x
        if p + 'downsample.0.weight' in sd:
            skip = bn(F.conv2d(x, sd[p + 'downsample.0.weight'], stride=stride), p + 'downsample.1')
        x = F.relu(y + skip)
        outs.append(x)
    return outs[2], outs[3]


def test_shapes_dtype_and_frozen(enc):
    f = enc.encode(images(3))
    assert f.shape == (3, 64) and f.dtype == np.float32 and np.all(np.isfinite(f))
    single = enc.encode(images(1)[0])
    assert single.shape == (1, 64)
    assert not enc.trunk.training
    assert all(not p.requires_grad for p in enc.trunk.parameters())
    # hybrid head: the first F//2 values are keypoint coordinates in [-1, 1]
    assert np.all(np.abs(f[:, :32]) <= 1.0)
    # features depend on the image
    assert not np.allclose(f[0], f[1])


def test_random_weights_warning_logged(caplog):
    with caplog.at_level(logging.WARNING, logger='poco_policy.encoder'):
        e = ImageEncoder(EncoderConfig(image_size=SIZE, seed=3))
    assert not e.pretrained
    assert any('RANDOM' in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_same_seed_same_features_other_seed_differs(enc):
    x = images(2)
    again = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=64))
    np.testing.assert_array_equal(enc.encode(x), again.encode(x))
    assert enc.fingerprint == again.fingerprint
    other = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=64, seed=1))
    assert not np.allclose(enc.encode(x), other.encode(x))
    assert other.fingerprint != enc.fingerprint


def test_deterministic_across_processes(enc, tmp_path):
    x = images(2, seed=5)
    np.save(tmp_path / 'x.npy', x)
    code = textwrap.dedent(f"""
        import numpy as np
        from poco_policy.encoder import EncoderConfig, ImageEncoder
        e = ImageEncoder(EncoderConfig(image_size={SIZE}, feature_dim=64))
        np.save({str(tmp_path / 'f.npy')!r}, e.encode(np.load({str(tmp_path / 'x.npy')!r})))
        print(e.fingerprint)
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == enc.fingerprint
    np.testing.assert_array_equal(np.load(tmp_path / 'f.npy'), enc.encode(x))


def test_batch_composition_changes_features_only_at_float_noise(enc):
    x = images(5, seed=2)
    batched = enc.encode(x)
    singles = np.concatenate([enc.encode(im) for im in x])
    np.testing.assert_allclose(batched, singles, atol=1e-4)
    chunked = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=64, batch_size=2)).encode(x)
    np.testing.assert_allclose(batched, chunked, atol=1e-4)


def test_checkpoint_loads_and_matches_reference_forward(tmp_path, caplog):
    path = tmp_path / 'resnet10.safetensors'
    sd = make_checkpoint(path)
    with caplog.at_level(logging.WARNING, logger='poco_policy.encoder'):
        e = ImageEncoder(EncoderConfig(checkpoint_path=str(path), image_size=SIZE, channels_last=False))
    assert e.pretrained
    assert not any('RANDOM' in r.getMessage() for r in caplog.records)
    loaded = e.trunk.state_dict()
    for k in expected_checkpoint_keys():
        torch.testing.assert_close(loaded[k], sd[k])
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        l3, l4 = e.trunk(x)
    r3, r4 = reference_trunk(sd, x)
    torch.testing.assert_close(l3, r3, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l4, r4, atol=1e-4, rtol=1e-4)
    rand = ImageEncoder(EncoderConfig(image_size=SIZE))
    assert e.fingerprint != rand.fingerprint
    assert not np.allclose(e.encode(images(2)), rand.encode(images(2)))


def test_checkpoint_prefix(tmp_path):
    path = tmp_path / 'prefixed.safetensors'
    make_checkpoint(path, prefix='backbone.')
    with pytest.raises(ValueError, match='unexpected'):
        ImageEncoder(EncoderConfig(checkpoint_path=str(path), image_size=SIZE))
    e = ImageEncoder(EncoderConfig(checkpoint_path=str(path), checkpoint_prefix='backbone.', image_size=SIZE))
    assert e.pretrained


def test_wrong_keys_give_clear_error(tmp_path):
    path = tmp_path / 'bad.safetensors'
    make_checkpoint(path, drop=('layer3.0.conv2.weight',), extra={'layer5.0.conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError) as ei:
        ImageEncoder(EncoderConfig(checkpoint_path=str(path), image_size=SIZE))
    msg = str(ei.value)
    assert 'layer3.0.conv2.weight' in msg and 'missing' in msg
    assert 'layer5.0.conv1.weight' in msg and 'unexpected' in msg


def test_wrong_shape_gives_clear_error(tmp_path):
    path = tmp_path / 'shape.safetensors'
    make_checkpoint(path, extra={'conv1.weight': torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match=r'conv1\.weight: \(64, 3, 3, 3\) != \(64, 3, 7, 7\)'):
        ImageEncoder(EncoderConfig(checkpoint_path=str(path), image_size=SIZE))


def test_missing_or_corrupt_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ImageEncoder(EncoderConfig(checkpoint_path=str(tmp_path / 'nope.safetensors')))
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(b'not a safetensors file at all')
    with pytest.raises(ValueError, match='safetensors'):
        ImageEncoder(EncoderConfig(checkpoint_path=str(junk)))


def test_input_validation_and_resize(enc):
    with pytest.raises(ValueError, match='uint8'):
        enc.encode(images(1).astype(np.float32))
    with pytest.raises(ValueError, match='shape'):
        enc.encode(np.zeros((1, SIZE, SIZE, 4), np.uint8))
    big = images(1, size=96)
    assert enc.encode(big).shape == (1, 64)  # resized to image_size


def test_heads_and_bf16(enc):
    x = images(2)
    kp = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=16, head='keypoints')).encode(x)
    assert kp.shape == (2, 16) and np.all(np.abs(kp) <= 1.0)
    pooled = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=10, head='pooled')).encode(x)
    assert pooled.shape == (2, 10)
    with pytest.raises(ValueError):
        EncoderConfig(head='nope')
    bf = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=64, bf16=True))
    fb, f32 = bf.encode(x), enc.encode(x)
    assert bf.fingerprint != enc.fingerprint
    # same weights in lower precision: close, not equal
    assert np.abs(fb - f32).max() < 0.15 and not np.array_equal(fb, f32)
