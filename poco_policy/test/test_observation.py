"""ActionScaler and ObservationAssembler: exact conversions, layout of the observation vector, validation."""
import numpy as np
import pytest

from poco_policy.config import from_dict
from poco_policy.encoder import EncoderConfig, ImageEncoder
from poco_policy.observation import ActionScaler, ObservationAssembler, ObservationConfig

SIZE = 64


@pytest.fixture(scope='module')
def encoder():
    return ImageEncoder(EncoderConfig(image_size=SIZE, feature_dim=8))


def frame(rng, n=None):
    lead = () if n is None else (n,)
    return {'front': rng.integers(0, 256, lead + (SIZE, SIZE, 3), dtype=np.uint8),
            'wrist': rng.integers(0, 256, lead + (SIZE, SIZE, 3), dtype=np.uint8),
            'proprio': rng.uniform(-1, 1, lead + (7,)).astype(np.float32)}


def test_action_scaler_hand_values():
    s = ActionScaler(max_joint_delta=0.05)
    phys = np.array([0.05, -0.025, 0.0, 0.01, -0.05, 0.0, 1.0])
    norm = s.normalize(phys)
    np.testing.assert_allclose(norm, [1.0, -0.5, 0.0, 0.2, -1.0, 0.0, 1.0], atol=1e-6)
    assert norm.dtype == np.float32
    np.testing.assert_allclose(s.normalize(np.array([0, 0, 0, 0, 0, 0, 0.0]))[-1], -1.0)
    np.testing.assert_allclose(s.normalize(np.array([0, 0, 0, 0, 0, 0, 0.5]))[-1], 0.0)
    np.testing.assert_allclose(s.denormalize(norm), phys, atol=1e-6)


def test_action_scaler_clipping_and_chunks():
    s = ActionScaler(max_joint_delta=0.1)
    # denormalise always clips: a sampled chunk can never exceed the joint-delta limit or the gripper range
    out = s.denormalize(np.array([[2.0, -3.0, 0.5, 0, 0, 0, 5.0], [0, 0, 0, 0, 0, 0, -9.0]]))
    np.testing.assert_allclose(out[0], [0.1, -0.1, 0.05, 0, 0, 0, 1.0], atol=1e-6)
    assert out[1, -1] == 0.0
    assert np.abs(s.normalize(np.array([0.3, 0, 0, 0, 0, 0, 1.0]))).max() == 1.0
    np.testing.assert_allclose(s.normalize(np.array([0.3, 0, 0, 0, 0, 0, 1.0]), clip=False)[0], 3.0, atol=1e-6)
    chunk = np.random.default_rng(0).uniform(-1, 1, (4, 5, 7))
    np.testing.assert_allclose(s.normalize(s.denormalize(chunk)), chunk, atol=1e-6)
    with pytest.raises(ValueError, match='last axis'):
        s.normalize(np.zeros(6))
    with pytest.raises(ValueError, match='non-finite'):
        s.denormalize(np.full(7, np.nan))
    with pytest.raises(ValueError):
        ActionScaler(max_joint_delta=0.0)


def test_state_mode_layout_and_batch():
    a = ObservationAssembler(ObservationConfig(obs_mode='state', state_dim=5))
    assert a.encoder is None and a.obs_dim == 12
    obs = {'state': np.arange(5, dtype=np.float32), 'proprio': np.arange(10, 17, dtype=np.float32)}
    v = a.assemble(obs)
    np.testing.assert_array_equal(v, np.arange(5).tolist() + np.arange(10, 17).tolist())
    assert v.dtype == np.float32
    batch = a.assemble_batch({'state': np.ones((3, 5)), 'proprio': np.zeros((3, 7))})
    assert batch.shape == (3, 12) and np.all(batch[:, :5] == 1) and np.all(batch[:, 5:] == 0)
    with pytest.raises(ValueError, match='state'):
        a.assemble({'proprio': np.zeros(7)})
    with pytest.raises(ValueError, match='shape'):
        a.assemble({'state': np.zeros(4), 'proprio': np.zeros(7)})
    with pytest.raises(ValueError, match='non-finite'):
        a.assemble({'state': np.full(5, np.inf), 'proprio': np.zeros(7)})
    with pytest.raises(ValueError, match='state_dim'):
        ObservationConfig(obs_mode='state')


def test_pixels_mode_layout_is_front_wrist_proprio(encoder):
    a = ObservationAssembler(ObservationConfig(), encoder=encoder)
    assert a.obs_dim == 2 * 8 + 7
    obs = frame(np.random.default_rng(1))
    v = a.assemble(obs)
    assert v.shape == (23,) and v.dtype == np.float32
    np.testing.assert_allclose(v[:8], encoder.encode(obs['front'])[0], atol=1e-4)
    np.testing.assert_allclose(v[8:16], encoder.encode(obs['wrist'])[0], atol=1e-4)
    np.testing.assert_array_equal(v[16:], obs['proprio'])
    swapped = a.assemble({**obs, 'front': obs['wrist'], 'wrist': obs['front']})
    np.testing.assert_allclose(swapped[:8], v[8:16], atol=1e-4)


def test_pixels_batch_matches_single_frames(encoder):
    a = ObservationAssembler(ObservationConfig(), encoder=encoder)
    frames = frame(np.random.default_rng(2), n=4)
    batch = a.assemble_batch(frames)
    assert batch.shape == (4, 23)
    for i in range(4):
        np.testing.assert_allclose(batch[i], a.assemble({k: v[i] for k, v in frames.items()}), atol=1e-4)
    assert a.assemble_batch({k: v[:0] for k, v in frames.items()}).shape == (0, 23)


def test_pixels_validation(encoder):
    a = ObservationAssembler(ObservationConfig(), encoder=encoder)
    obs = frame(np.random.default_rng(3))
    with pytest.raises(ValueError, match="'wrist'"):
        a.assemble({'front': obs['front'], 'proprio': obs['proprio']})
    with pytest.raises(ValueError, match='uint8'):
        a.assemble({**obs, 'front': obs['front'].astype(np.float32)})
    with pytest.raises(ValueError, match='proprio'):
        a.assemble({**obs, 'proprio': np.zeros(6)})
    with pytest.raises(ValueError):
        a.assemble_batch({**frame(np.random.default_rng(4), n=3), 'proprio': np.zeros((2, 7))})
    one_cam = ObservationAssembler(ObservationConfig(cameras=('wrist',)), encoder=encoder)
    assert one_cam.obs_dim == 8 + 7
    assert one_cam.assemble({'wrist': obs['wrist'], 'proprio': obs['proprio']}).shape == (15,)


def test_nested_encoder_config_forms():
    nested = ObservationAssembler(ObservationConfig(encoder=EncoderConfig(image_size=SIZE, feature_dim=6)))
    assert nested.obs_dim == 2 * 6 + 7 and nested.encoder.cfg.image_size == SIZE
    from_yaml = from_dict(ObservationConfig, {'encoder': {'feature_dim': 6, 'image_size': SIZE}})
    assert from_yaml.encoder == EncoderConfig(feature_dim=6, image_size=SIZE)
    from_ros = from_dict(ObservationConfig, {'encoder': '{"feature_dim": 6}'})
    assert from_ros.encoder.feature_dim == 6
    assert from_dict(ObservationConfig, {'encoder': ''}).encoder is None
    with pytest.raises(ValueError, match='unknown config keys'):
        ObservationConfig(encoder={'feature_dims': 6})
    with pytest.raises(ValueError, match='differ'):
        ObservationAssembler(from_yaml, EncoderConfig(feature_dim=7))


def test_config_loads_with_house_loader():
    cfg = from_dict(ObservationConfig, {'obs_mode': 'state', 'state_dim': 9, 'cameras': ['front']})
    assert cfg.cameras == ('front',) and cfg.state_dim == 9
    enc = from_dict(EncoderConfig, {'feature_dim': 32, 'bf16': 'true'})
    assert enc.feature_dim == 32 and enc.bf16 is True
    with pytest.raises(ValueError):
        from_dict(ObservationConfig, {'obs_mode': 'depth'})
