"""Weights at the trust boundary: what a PolicyWeights message must satisfy before anything is deserialised.

ROS-free and torch-free (plain Python + stdlib), so every check here is cheap, bounded and unit-testable:
- `WeightsLimits`: what the robot expects (obs size, action size = joints + gripper, chunk length T) and the
  configured bounds (layer width/count, flow steps, candidates, payload bytes, metadata bytes and JSON depth,
  version jump).
- `loads_bounded`: JSON with a size and nesting-depth limit checked BEFORE `json.loads` (no RecursionError).
- `safetensors_header`: the safetensors header parsed by hand (u64 little-endian length + JSON) and every
  tensor's dtype/shape/offsets checked against the payload, so a tiny payload declaring 8192-wide layers is
  refused before torch allocates anything.
- `sign` / `verify`: HMAC-SHA256 (stdlib `hmac` + `hashlib`) over (version, sha256 of payload, metadata)
  with a key file the operator provides.
- `precheck`: all of the above in order; returns the parsed metadata and the actor config dict.
Every refusal raises `WeightsRejected(reason, detail)`; `reason` is a short fixed label (the drop counter key).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Optional

SIGNATURE_SCHEME = 'hmac-sha256'
MIN_KEY_BYTES = 16
_DTYPE_BYTES = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1, 'U8': 1,
                'BOOL': 1}


class WeightsRejected(ValueError):
    """Weights that must not be run. `reason` is the counter label, the message the detail."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class WeightsLimits:
    obs_dim: int = 0                  # 0 = not known yet (any size passes this check; the forward pass decides)
    action_dim: int = 7               # joints + gripper
    horizon: int = 0                  # chunk length T; 0 = any up to max_horizon
    max_horizon: int = 64
    max_hidden_dim: int = 1024
    max_hidden_layers: int = 8
    max_flow_steps: int = 100
    max_candidates: int = 256         # best-of-N samples per act
    max_critics: int = 10
    max_weights_bytes: int = 64 << 20
    max_metadata_bytes: int = 64 << 10
    max_json_depth: int = 16
    max_version_jump: int = 1000      # refused when version > running + this (0 = no bound)


# ------------------------------------------------------------------------------------------ bounded JSON
def json_depth(text: str, limit: int) -> int:
    """Nesting depth of JSON text (brackets outside strings); stops counting once past `limit`."""
    depth = best = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == '\\':
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in '[{':
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        elif ch in ']}':
            depth -= 1
    return best


def loads_bounded(text, max_bytes: int, max_depth: int, what: str = 'metadata') -> Any:
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise WeightsRejected(f'{what} too large', f'{what}: {len(text)} bytes > {max_bytes}')
        try:
            text = bytes(text).decode('utf-8')
        except UnicodeDecodeError as e:
            raise WeightsRejected(f'{what} not JSON', f'{what}: not UTF-8: {e}') from e
    if len(text) > max_bytes:
        raise WeightsRejected(f'{what} too large', f'{what}: {len(text)} characters > {max_bytes}')
    if json_depth(text, max_depth) > max_depth:
        raise WeightsRejected(f'{what} too deep', f'{what}: JSON nested deeper than {max_depth}')
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise WeightsRejected(f'{what} not JSON', f'{what}: {str(e)[:200]}') from e


def _no_constant(name):
    raise ValueError(f'JSON constant {name} refused')


# ------------------------------------------------------------------------------------------ safetensors header
def safetensors_header(payload: bytes, limits: WeightsLimits) -> tuple[dict, dict]:
    """(tensors {name: (dtype, shape)}, __metadata__) of a safetensors payload, checked without deserialising:
    header size and depth bounded, every tensor's bytes = prod(shape) * dtype size, offsets contiguous and
    covering the data exactly, no dimension wider than the configured bounds allow."""
    n_total = len(payload)
    if n_total < 8:
        raise WeightsRejected('corrupt payload', 'payload shorter than the 8-byte header length')
    n = int.from_bytes(payload[:8], 'little')
    if n <= 1 or 8 + n > n_total:
        raise WeightsRejected('corrupt payload', f'header length {n} does not fit a {n_total}-byte payload')
    header = loads_bounded(payload[8:8 + n], limits.max_metadata_bytes, limits.max_json_depth, 'payload header')
    if not isinstance(header, dict):
        raise WeightsRejected('corrupt payload', 'safetensors header is not a JSON object')
    meta = header.pop('__metadata__', None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WeightsRejected('corrupt payload', '__metadata__ must map strings to strings')
    data_len = n_total - 8 - n
    # widest dimension any tensor of an allowed network can have: a hidden layer, or an input/output layer
    max_dim = max(limits.max_hidden_dim, limits.obs_dim or 0, limits.action_dim * limits.max_horizon) + 1
    spans, tensors = [], {}
    for name, t in header.items():
        try:
            dtype, shape, (b, e) = t['dtype'], list(t['shape']), t['data_offsets']
        except (KeyError, TypeError, ValueError) as ex:
            raise WeightsRejected('corrupt payload', f'tensor {str(name)[:60]!r}: malformed entry') from ex
        if dtype not in _DTYPE_BYTES:
            raise WeightsRejected('corrupt payload', f'tensor {str(name)[:60]!r}: dtype {str(dtype)[:20]!r}')
        if len(shape) > 4 or not all(isinstance(d, int) and 0 <= d for d in shape):
            raise WeightsRejected('corrupt payload', f'tensor {name[:60]!r}: shape {str(shape)[:80]}')
        if any(d > max_dim for d in shape):
            raise WeightsRejected('too large', f'tensor {name[:60]!r}: shape {shape} exceeds the width bound')
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e <= data_len):
            raise WeightsRejected('corrupt payload', f'tensor {name[:60]!r}: offsets {b}..{e} outside the data')
        if math.prod(shape) * _DTYPE_BYTES[dtype] != e - b:
            raise WeightsRejected('corrupt payload',
                                  f'tensor {name[:60]!r}: shape {shape} {dtype} needs '
                                  f'{math.prod(shape) * _DTYPE_BYTES[dtype]} bytes, has {e - b}')
        spans.append((b, e))
        tensors[name] = (dtype, tuple(shape))
    pos = 0
    for b, e in sorted(spans):
        if b != pos:
            raise WeightsRejected('corrupt payload', 'tensor data overlaps or leaves gaps')
        pos = e
    if pos != data_len:
        raise WeightsRejected('corrupt payload', f'{data_len - pos} bytes after the last tensor')
    return tensors, meta


# ------------------------------------------------------------------------------------------ signing
def load_key(path: str) -> bytes:
    """The operator's HMAC key (raw bytes of the file, at least 16). Refuses a file others can read."""
    path = os.path.expanduser(path)
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f'weights key {path} is readable by group/others (mode {oct(st.st_mode & 0o777)}): '
                         f'chmod 600 {path}')
    with open(path, 'rb') as f:
        key = f.read(4096)
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f'weights key {path} has {len(key)} bytes; at least {MIN_KEY_BYTES} are required '
                         f'(head -c 32 /dev/urandom > {path})')
    return key


def _signed_bytes(version: int, sha256_hex: str, metadata: str) -> bytes:
    return b'\n'.join([b'poco-weights-v1', str(int(version)).encode(), sha256_hex.encode('ascii', 'replace'),
                       metadata.encode('utf-8', 'surrogatepass')])


def sign(key: bytes, version: int, sha256_hex: str, metadata: str) -> str:
    """'hmac-sha256:<hex>' over (version, payload sha256, metadata)."""
    mac = hmac.new(key, _signed_bytes(version, sha256_hex, metadata), hashlib.sha256).hexdigest()
    return f'{SIGNATURE_SCHEME}:{mac}'


def verify(key: bytes, version: int, sha256_hex: str, metadata: str, signature: str) -> None:
    if not signature:
        raise WeightsRejected('unsigned', 'weights carry no signature and a key is configured')
    want = sign(key, version, sha256_hex, metadata)
    if not hmac.compare_digest(want.encode(), str(signature).encode('utf-8', 'replace')):
        raise WeightsRejected('bad signature', 'signature does not match the configured key')


# ------------------------------------------------------------------------------------------ all checks
def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise WeightsRejected('bad config', f'{what} must be an integer, got {str(v)[:40]!r}')
    return v


def check_config(cfg: Any, limits: WeightsLimits, what: str = 'config') -> dict:
    """The actor's FlowPolicyConfig dict against the robot and the bounds."""
    if not isinstance(cfg, dict):
        raise WeightsRejected('bad config', f'{what} is not an object')
    obs, act, T = (_int(cfg.get(k), f'{what}.{k}') for k in ('obs_dim', 'action_dim', 'horizon'))
    K = _int(cfg.get('flow_steps', 10), f'{what}.flow_steps')
    hidden = cfg.get('hidden_dims')
    if not isinstance(hidden, list) or not hidden:
        raise WeightsRejected('bad config', f'{what}.hidden_dims must be a non-empty list')
    hidden = [_int(h, f'{what}.hidden_dims') for h in hidden]
    if act != limits.action_dim:
        raise WeightsRejected('action size', f'action_dim {act} != robot {limits.action_dim} (joints + gripper)')
    if limits.obs_dim and obs != limits.obs_dim:
        raise WeightsRejected('obs size', f'obs_dim {obs} != robot observation {limits.obs_dim}')
    if not 0 < obs <= 1_000_000:
        raise WeightsRejected('obs size', f'obs_dim {obs}')
    if limits.horizon and T != limits.horizon:
        raise WeightsRejected('chunk length', f'horizon {T} != robot chunk length {limits.horizon}')
    if not 0 < T <= limits.max_horizon:
        raise WeightsRejected('chunk length', f'horizon {T} outside 1..{limits.max_horizon}')
    if not 0 < K <= limits.max_flow_steps:
        raise WeightsRejected('flow steps', f'flow_steps {K} outside 1..{limits.max_flow_steps}')
    if len(hidden) > limits.max_hidden_layers or not all(0 < h <= limits.max_hidden_dim for h in hidden):
        raise WeightsRejected('too large', f'hidden_dims {hidden[:10]} outside the bounds '
                                           f'({limits.max_hidden_layers} layers of <= {limits.max_hidden_dim})')
    return cfg


def check_best_of_n(sel: Any, limits: WeightsLimits) -> None:
    if sel is None:
        return
    try:
        n, c = _int(sel['num_candidates'], 'num_candidates'), sel['critic']
        hidden = [_int(h, 'critic.hidden') for h in c['hidden']]
        nc = _int(c['num_critics'], 'critic.num_critics')
    except (KeyError, TypeError) as e:
        raise WeightsRejected('bad config', f'malformed best_of_n: {e!r}') from e
    if not 0 < n <= limits.max_candidates:
        raise WeightsRejected('too large', f'best_of_n num_candidates {n} outside 1..{limits.max_candidates}')
    if not 0 < nc <= limits.max_critics or not hidden or len(hidden) > limits.max_hidden_layers \
            or not all(0 < h <= limits.max_hidden_dim for h in hidden):
        raise WeightsRejected('too large', f'best_of_n critic {nc} x {hidden[:10]} outside the bounds')


def precheck(version: int, fmt: str, sha256_hex: str, payload: bytes, metadata: str, signature: str,
             running_version: int, limits: Optional[WeightsLimits], key: Optional[bytes]) -> tuple[dict, dict]:
    """Every check that needs no deserialisation, cheapest first. Returns (metadata dict, actor config dict).
    `limits=None` (no robot to match: plain-Python uses of the gate) checks only version, format, signature,
    sha256 and that the metadata is bounded JSON; the payload is then left to the loader."""
    robot = limits is not None
    limits = limits or WeightsLimits(max_version_jump=0)
    if version <= running_version:
        raise WeightsRejected('stale version', f'version {version} is not newer than the running {running_version}')
    if limits.max_version_jump and running_version > 0 and version - running_version > limits.max_version_jump:
        raise WeightsRejected('version jump', f'version {version} jumps more than {limits.max_version_jump} '
                                              f'past the running {running_version}')
    if fmt != 'safetensors':
        raise WeightsRejected('format', f'format {str(fmt)[:40]!r} refused: only safetensors is accepted')
    if len(payload) > limits.max_weights_bytes:
        raise WeightsRejected('too large', f'payload {len(payload)} bytes > {limits.max_weights_bytes}')
    if len(metadata) > limits.max_metadata_bytes:
        raise WeightsRejected('metadata too large', f'metadata {len(metadata)} > {limits.max_metadata_bytes}')
    digest = hashlib.sha256(payload).hexdigest()
    if key is not None:   # origin before content: an unsigned message is not even parsed
        verify(key, version, sha256_hex, metadata, signature)
    if not hmac.compare_digest(digest, str(sha256_hex)):
        raise WeightsRejected('sha256 mismatch', f'sha256 mismatch: got {digest[:12]}.., message says {str(sha256_hex)[:12]}..')
    meta = loads_bounded(metadata, limits.max_metadata_bytes, limits.max_json_depth) if metadata else {}
    if not isinstance(meta, dict):
        raise WeightsRejected('bad config', 'metadata is not a JSON object')
    if not robot:
        return meta, {}
    _, head = safetensors_header(payload, limits)
    cfgs = []
    for what, raw in (('metadata config', meta.get('config')), ('header config', head.get('config'))):
        if isinstance(raw, str):
            raw = loads_bounded(raw, limits.max_metadata_bytes, limits.max_json_depth, what)
        if raw is not None:
            cfgs.append(check_config(raw, limits, what))
    if not cfgs:
        raise WeightsRejected('bad config', 'no actor config in metadata or payload header')
    sels = [meta.get('best_of_n')]
    if 'best_of_n' in head:
        sels.append(loads_bounded(head['best_of_n'], limits.max_metadata_bytes, limits.max_json_depth,
                                  'header best_of_n'))
    for sel in sels:
        check_best_of_n(sel, limits)
    return meta, cfgs[0]
