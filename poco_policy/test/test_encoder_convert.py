"""poco_convert_encoder + the GroupNorm / TF-SAME encoder variant: each source layout round-trips to identical
features, the restricted unpickler refuses anything but arrays and containers, layout errors are one line."""
import collections
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from poco_policy.convert_encoder import ConvertError, convert, load_numpy_pickle, main, serl_layout
from poco_policy.encoder import (EncoderConfig, ImageEncoder, _same_pad, expected_checkpoint_keys,
                                 read_checkpoint_meta)

SIZE = 64


def images(n, seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def random_state(norm, seed=1):
    """torchvision-named trunk state with non-trivial norm parameters (and BN statistics)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in expected_checkpoint_keys(norm).items():
        if k.endswith('running_var'):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(('running_mean', 'bias')):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * (2.0 / float(np.prod(shape[1:]))) ** 0.5
    return sd


def serl_tree(sd):
    """The same GroupNorm weights in SERL's Flax layout: nested dicts of numpy arrays, kernels HWIO."""
    tree = {}
    for path, (key, _) in serl_layout().items():
        a = sd[key].numpy()
        a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a  # OIHW -> HWIO
        node = tree
        *parents, leaf = path.split('/')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(a)
    tree['output_head'] = {'kernel': np.zeros((512, 1000), np.float32), 'bias': np.zeros(1000, np.float32)}
    return tree


def encoder(path, **kw):
    return ImageEncoder(EncoderConfig(checkpoint_path=str(path), image_size=SIZE, **kw))


def reference_trunk(sd, x, norm, same):
    """Independent functional forward; 'same' padding hard-coded for the even sizes of a 64x64 input."""
    def nrm(y, p):
        if norm == 'group':
            return F.group_norm(y, 4, sd[p + '.weight'], sd[p + '.bias'], 1e-5)
        return F.batch_norm(y, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                            False, 0.0, 1e-5)
    x = F.relu(nrm(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), 'bn1'))
    x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float('-inf')), 3, 2) if same else F.max_pool2d(x, 3, 2, 1)
    outs = []
    for i, stride in zip(range(1, 5), (1, 2, 2, 2)):
        p = f'layer{i}.0.'
        if same and stride == 2:
            y = F.conv2d(F.pad(x, (0, 1, 0, 1)), sd[p + 'conv1.weight'], stride=2)
        else:
            y = F.conv2d(x, sd[p + 'conv1.weight'], stride=stride, padding=1)
        y = nrm(F.conv2d(F.relu(nrm(y, p + 'bn1')), sd[p + 'conv2.weight'], padding=1), p + 'bn2')
        skip = x
        if p + 'downsample.0.weight' in sd:
            skip = nrm(F.conv2d(x, sd[p + 'downsample.0.weight'], stride=stride), p + 'downsample.1')
        x = F.relu(y + skip)
        outs.append(x)
    return outs[2], outs[3]


def test_same_padding_puts_the_odd_pixel_bottom_right():
    x = torch.ones(1, 1, 32, 33)
    y = _same_pad(x, 3, 2)
    # height 32 -> total pad 1 (0 top, 1 bottom); width 33 -> total 2 (1 left, 1 right): TF/Flax 'SAME'
    assert y.shape == (1, 1, 33, 35)
    assert y[0, 0, 0, 1:-1].eq(1).all() and y[0, 0, -1].eq(0).all()
    assert y[0, 0, :-1, 0].eq(0).all() and y[0, 0, :-1, -1].eq(0).all()


@pytest.mark.parametrize('norm,padding', [('group', 'same'), ('group', 'torch'), ('batch', 'same')])
def test_variants_match_reference_forward(tmp_path, norm, padding):
    sd = random_state(norm)
    src = tmp_path / 'src.safetensors'
    save_file(sd, str(src))
    out = tmp_path / 'out.safetensors'
    convert(src, out, norm=norm, padding=padding, image_size=SIZE)
    e = encoder(out, channels_last=False)
    assert e.trunk.norm == norm and e.trunk.padding == padding
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        l3, l4 = e.trunk(x)
    r3, r4 = reference_trunk(sd, x, norm, padding == 'same')
    torch.testing.assert_close(l3, r3, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(l4, r4, atol=1e-4, rtol=1e-4)


def test_serl_pickle_round_trips_and_matches_torchvision_layout(tmp_path):
    sd = random_state('group')
    pkl = tmp_path / 'resnet10_params.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump(serl_tree(sd), f)
    out_serl = tmp_path / 'serl.safetensors'
    meta = convert(pkl, out_serl, image_size=SIZE)
    assert (meta['norm'], meta['padding']) == ('group', 'same')
    e_serl = encoder(out_serl)
    # loaded tensors equal the source arrays after the layout transform (HWIO -> OIHW, scale -> weight)
    loaded = e_serl.trunk.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    assert e_serl.trunk.layer2[0].conv1.weight.shape == (128, 64, 3, 3)
    # the same weights from the torchvision layout, as safetensors and as torch.save zip
    st, pth = tmp_path / 'tv.safetensors', tmp_path / 'tv.pth'
    save_file(sd, str(st))
    torch.save(collections.OrderedDict(sd), pth)
    x = images(3)
    f_serl = e_serl.encode(x)
    for src in (st, pth):
        out = tmp_path / f'{src.suffix[1:]}.safetensors'
        convert(src, out, padding='same', image_size=SIZE)
        e = encoder(out)
        np.testing.assert_array_equal(e.encode(x), f_serl)
        assert e.fingerprint == e_serl.fingerprint
    # the recorded fingerprint is the runtime one at the recorded size
    assert read_checkpoint_meta(out_serl)['fingerprint'] == e_serl.fingerprint
    # symmetric padding computes something else: the padding is part of the weights' meaning
    convert(st, tmp_path / 'sym.safetensors', image_size=SIZE)
    assert not np.allclose(encoder(tmp_path / 'sym.safetensors').encode(x), f_serl)


def test_serl_pickle_protocols_and_wrappers(tmp_path):
    sd = random_state('group', seed=2)
    ref = None
    for proto, wrap in ((2, lambda t: t), (4, lambda t: {'params': t}), (5, lambda t: {'pretrained_encoder': t})):
        pkl = tmp_path / f'p{proto}.pkl'
        pkl.write_bytes(pickle.dumps(wrap(serl_tree(sd)), protocol=proto))
        out = tmp_path / f'p{proto}.safetensors'
        convert(pkl, out, image_size=SIZE)
        f = encoder(out).encode(images(2))
        if ref is None:
            ref = f
        np.testing.assert_array_equal(f, ref)


def test_batchnorm_torchvision_pth_equals_direct_safetensors(tmp_path):
    sd = random_state('batch', seed=3)
    sd['bn1.num_batches_tracked'] = torch.tensor(5)
    full = {'backbone.' + k: v for k, v in sd.items()}
    full['backbone.fc.weight'] = torch.zeros(1000, 512)
    pth = tmp_path / 'ckpt.pt'
    torch.save({'epoch': 3, 'state_dict': full}, pth)  # a training checkpoint: the state dict is one entry
    out = tmp_path / 'out.safetensors'
    meta = convert(pth, out, prefix='backbone.', image_size=SIZE)
    assert (meta['norm'], meta['padding']) == ('batch', 'torch')
    direct = tmp_path / 'direct.safetensors'
    save_file({k: v for k, v in sd.items()}, str(direct))
    x = images(2, seed=4)
    np.testing.assert_array_equal(encoder(out).encode(x), encoder(direct).encode(x))
    # the random-head fingerprint of a plain torchvision file equals the converted one's (same weights, same head)
    assert encoder(out).fingerprint == encoder(direct).fingerprint


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class Custom:
    pass


def test_pickle_with_code_or_custom_class_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pkl'
    tree = serl_tree(random_state('group'))
    tree['conv_init']['kernel'] = Evil(marker)
    evil.write_bytes(pickle.dumps(tree))
    with pytest.raises(ConvertError, match=r'refused to unpickle global (os|posix)\.system') as ei:
        convert(evil, tmp_path / 'o.safetensors')
    assert '\n' not in str(ei.value)
    assert not marker.exists()
    custom = tmp_path / 'custom.pkl'
    custom.write_bytes(pickle.dumps({'conv_init': Custom()}))
    with pytest.raises(ConvertError, match=r'global .*test_encoder_convert\.Custom'):
        load_numpy_pickle(custom)
    # a torch zip holding something other than tensors is refused by the same rule
    pth = tmp_path / 'evil.pth'
    torch.save({'conv1.weight': torch.zeros(1), 'x': Evil(marker)}, pth)
    with pytest.raises(ConvertError, match=r'(os|posix)\.system'):
        convert(pth, tmp_path / 'o.safetensors')
    assert not marker.exists() and not (tmp_path / 'o.safetensors').exists()


def test_wrong_shape_or_missing_key_is_one_line(tmp_path, capsys):
    tree = serl_tree(random_state('group'))
    del tree['ResNetBlock_2']['conv_proj']
    tree['ResNetBlock_1']['Conv_1']['kernel'] = np.zeros((3, 3, 128, 64), np.float32)
    pkl = tmp_path / 'bad.pkl'
    pkl.write_bytes(pickle.dumps(tree))
    with pytest.raises(ConvertError) as ei:
        convert(pkl, tmp_path / 'o.safetensors')
    msg = str(ei.value)
    assert '\n' not in msg
    assert 'missing (1): ResNetBlock_2/conv_proj/kernel' in msg
    assert 'ResNetBlock_1/Conv_1/kernel: (3, 3, 128, 64) != (3, 3, 128, 128)' in msg
    # the CLI: exit 1, one stderr line, nothing written
    assert main([str(pkl), str(tmp_path / 'o.safetensors')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'missing (1)' in err and 'wrong shape (1)' in err
    assert not (tmp_path / 'o.safetensors').exists()
    sd = random_state('batch')
    del sd['layer4.0.bn2.running_var']
    sd['layer9.weight'] = torch.zeros(3)
    st = tmp_path / 'bad.safetensors'
    save_file(sd, str(st))
    with pytest.raises(ConvertError, match=r'missing \(1\): layer4\.0\.bn2\.running_var; unexpected \(1\): '
                                           r'layer9\.weight$'):
        convert(st, tmp_path / 'o.safetensors')


def test_cli_writes_loadable_checkpoint(tmp_path, capsys):
    pkl = tmp_path / 'resnet10_params.pkl'
    pkl.write_bytes(pickle.dumps(serl_tree(random_state('group'))))
    out = tmp_path / 'enc' / 'serl.safetensors'
    assert main([str(pkl), str(out), '--image-size', str(SIZE)]) == 0
    assert 'encoder.checkpoint_path=' in capsys.readouterr().out
    e = encoder(out, norm='group')  # an explicit norm that agrees is fine
    assert e.pretrained and not e.head_from_checkpoint
    with pytest.raises(ValueError, match="group-norm ResNet-10, EncoderConfig.norm is 'batch'"):
        encoder(out, norm='batch')


def test_edited_checkpoint_fails_digest(tmp_path):
    from safetensors.torch import load_file
    from safetensors import safe_open
    out = tmp_path / 'ok.safetensors'
    st = tmp_path / 'src.safetensors'
    save_file(random_state('group'), str(st))
    convert(st, out, image_size=SIZE)
    tensors = load_file(str(out))
    with safe_open(str(out), 'pt') as f:
        metadata = f.metadata()
    tensors['conv1.weight'][0, 0, 0, 0] += 1.0
    save_file(tensors, str(out), metadata=metadata)
    with pytest.raises(ValueError, match='weights_sha256'):
        encoder(out)
    assert json.loads(metadata['poco_encoder'])['norm'] == 'group'
