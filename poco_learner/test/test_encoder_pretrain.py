"""poco_pretrain_encoder: a tiny run on episodes the test collects writes a checkpoint the encoder loader accepts,
with a trained head, whose features differ from the random init; the training loss goes down."""
import json

import numpy as np
import pytest
import torch

from poco_learner.pretrain_encoder import PretrainEncoderConfig, load_frames, main, pretrain, random_shift
from poco_policy.encoder import EncoderConfig, ImageEncoder, read_checkpoint_meta

SIZE = 32  # the smallest the encoder takes: keeps a CPU training run to seconds


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    from poco_sim.collect import collect
    out = tmp_path_factory.mktemp('demos')
    collect('pick_cube', 'pixels', 3, out, image_size=SIZE, max_steps=20, seed=0, log=None)
    return out


def test_load_frames_chunks_and_mask(demos):
    fr = load_frames([str(demos)], horizon=5, image_size=SIZE)
    assert fr.images.shape[1:] == (2, SIZE, SIZE, 3) and fr.images.dtype == np.uint8
    assert fr.chunks.shape[1:] == (5, 7) and fr.valid.shape[1:] == (5,)
    last = np.flatnonzero(fr.episode == 0)[-1]
    # the episode's last action frame has one valid step; the padded steps are masked and zero
    assert fr.valid[last].tolist() == [1, 0, 0, 0, 0] and not fr.chunks[last, 1:].any()
    assert np.abs(fr.chunks).max() <= 1.0
    # resizing on load gives what the encoder's own resize gives at run time (same rule)
    big = load_frames([str(demos)], horizon=5, image_size=48)
    assert big.images.shape[2:4] == (48, 48)


def test_random_shift_is_a_crop_of_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode='replicate')
    for i in range(2):
        assert any(torch.equal(y[i], padded[i, :, oy:oy + 8, ox:ox + 8]) for oy in range(5) for ox in range(5))


def test_tiny_run_writes_loadable_trained_checkpoint(demos, tmp_path):
    out = tmp_path / 'enc.safetensors'
    cfg = PretrainEncoderConfig(data=[str(demos)], out=str(out), image_size=SIZE, steps=24, batch_size=6,
                                log_every=8, feature_dim=16, seed=0, train_from='layer1')
    lines = []
    s = pretrain(cfg, log=lines.append)
    # progress: one line per log_every steps with the loss and images/s
    progress = [ln for ln in lines if ' step ' in ln]
    assert len(progress) == 3 and all('loss' in ln and 'img/s' in ln for ln in progress)
    # the objective is learned: loss on a fixed, unaugmented training subset goes down
    assert s['fit_bc_after'] < 0.8 * s['fit_bc_before']
    assert s['fit_proprio_after'] < s['fit_proprio_before']
    assert s['trunk_changed']
    meta = read_checkpoint_meta(out)
    assert (meta['norm'], meta['head'], meta['feature_dim']) == ('group', 'hybrid', 16)
    # the loader accepts it (norm and head from the checkpoint) and reproduces the recorded fingerprint
    enc = ImageEncoder(EncoderConfig(checkpoint_path=str(out), image_size=SIZE, feature_dim=16))
    assert enc.pretrained and enc.head_from_checkpoint and enc.trunk.norm == 'group'
    assert enc.fingerprint == meta['fingerprint']
    rand = ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=16, norm='group'))  # the run's seeded init
    x = load_frames([str(demos)], horizon=5, image_size=SIZE).images[:4, 0]
    f_trained, f_rand = enc.encode(x), rand.encode(x)
    assert f_trained.shape == (4, 16) and np.all(np.isfinite(f_trained))
    assert np.abs(f_trained - f_rand).max() > 1e-3
    # the checkpoint fixes the feature size: a config asking for another is refused, in one line
    with pytest.raises(ValueError, match='feature_dim 16') as ei:
        ImageEncoder(EncoderConfig(checkpoint_path=str(out), image_size=SIZE, feature_dim=64))
    assert '\n' not in str(ei.value)
    assert json.loads(json.dumps(meta['pretrain']))['steps'] == 24


def test_cli_and_errors(demos, tmp_path, capsys):
    out = tmp_path / 'cli.safetensors'
    assert main(['--data', str(demos), '--out', str(out), '--image-size', str(SIZE), '--steps', '2',
                 '--batch-size', '4', '--log-every', '1', '--feature-dim', '8', '--train-from', 'layer4']) == 0
    text = capsys.readouterr().out
    assert 'step 2/2' in text and f'encoder.checkpoint_path={out}' in text
    assert ImageEncoder(EncoderConfig(checkpoint_path=str(out), image_size=SIZE, feature_dim=8)).head_from_checkpoint
    # a state-mode dataset is refused with a message naming the problem
    from poco_sim.collect import collect
    state = tmp_path / 'state'
    collect('pick_cube', 'state', 1, state, max_steps=5, seed=0, log=None)
    assert main(['--data', str(state), '--out', str(tmp_path / 'x.safetensors')]) == 1
    assert 'pixels' in capsys.readouterr().err
