"""`poco_convert_encoder`: turn the ResNet-10 checkpoints users have into the encoder's safetensors (offline).

    poco_convert_encoder ~/.serl/resnet10_params.pkl encoders/serl_resnet10.safetensors      # SERL / HIL-SERL
    poco_convert_encoder resnet10.pth encoders/r10.safetensors --prefix backbone.             # torchvision .pth/.pt
    poco_convert_encoder resnet10.safetensors encoders/r10.safetensors --norm group           # torchvision safetensors

Then: `encoder.checkpoint_path=<OUT>` (learner), `encoder_checkpoint:=<OUT>` (policy node).

Sources (`--from`, default by file type: .pkl/.pickle = serl, anything else = torchvision):
  serl         SERL's ResNet-10 Flax parameters (`resnet10_params.pkl`, ImageNet-pretrained, GroupNorm 4 groups,
               TF 'SAME' padding): a pickle of nested dicts of numpy arrays
               {conv_init: {kernel [7,7,3,64]}, norm_init: {scale, bias}, ResNetBlock_{0..3}: {Conv_0, Conv_1:
               {kernel HWIO}, MyGroupNorm_0, MyGroupNorm_1: {scale, bias}, conv_proj: {kernel}, norm_proj}}
               (blocks 1-3 have the projection), as `serl_launcher/vision/resnet_v1.py` names them. A wrapping
               'params' / 'pretrained_encoder' level is unwrapped; `output_head` (ImageNet classifier) is ignored.
               Kernels HWIO -> OIHW, scale -> weight; the output records norm=group, padding=same.
  torchvision  a state dict with torchvision ResNet names (see poco_policy.encoder): a safetensors file or a
               torch.save file (.pth/.pt zip). BatchNorm or GroupNorm (`--norm`, default: batch when it holds
               running statistics, else group). `--prefix` strips a key prefix, `--key` picks a nested entry
               (default: the mapping itself, else its 'state_dict' / 'model' entry).

Pickles are read by an unpickler that admits only numpy arrays (numpy's array/dtype/scalar reconstructors), torch
tensor rebuilding from the file's own storages (torch zip), and plain containers (dict, list, tuple,
OrderedDict, and flax's FrozenDict read as a dict); any other global is refused, naming it, before anything of it
runs. Runtime code never reads a pickle: only this offline tool does, and only this way.

A wrong shape or a missing / unexpected key fails with one line listing all of them. The written file is loaded
back with the encoder and must give finite features before the tool reports success.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from poco_policy.encoder import (EncoderConfig, ImageEncoder, expected_checkpoint_keys, layout_problems,
                                 save_checkpoint)


class ConvertError(ValueError):
    """The source cannot be converted (message: one line saying why)."""


# ------------------------------------------------------------------------------------------ restricted pickle
_NP_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]          # numpy(._core).multiarray._reconstruct
_NP_SCALAR = np.float32(0).__reduce__()[0]                   # numpy(._core).multiarray.scalar
_NP_FROMBUFFER = np.zeros(2).__reduce_ex__(5)[0]             # numpy(._core).numeric._frombuffer (protocol 5)
_NUMPY_GLOBALS = {
    **{(mod, '_reconstruct'): _NP_RECONSTRUCT for mod in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(mod, 'scalar'): _NP_SCALAR for mod in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(mod, '_frombuffer'): _NP_FROMBUFFER for mod in ('numpy.core.numeric', 'numpy._core.numeric')},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): lambda text, encoding='latin1': _latin1(text, encoding),  # bytes in pickle protocol 2
}
def _latin1(text: str, encoding: str) -> bytes:
    if encoding.replace('-', '').lower() != 'latin1':
        raise ConvertError(f'refused _codecs.encode with encoding {encoding!r} (pickle protocol 2 uses latin1 only)')
    return text.encode('latin1')


_CONTAINERS = {
    ('builtins', 'dict'): dict, ('builtins', 'list'): list, ('builtins', 'tuple'): tuple,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    # flax pickles FrozenDict as FrozenDict(dict): reading it as the dict it wraps runs nothing of flax
    ('flax.core.frozen_dict', 'FrozenDict'): dict,
}
# torch zip: typed storage classes name the element type of a storage blob
_TORCH_STORAGES = {'FloatStorage': torch.float32, 'DoubleStorage': torch.float64, 'HalfStorage': torch.float16,
                   'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
                   'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8,
                   'BoolStorage': torch.bool}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset)).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str, allowed: Mapping[tuple[str, str], Any], storages=None):
        super().__init__(file)
        self._where, self._allowed, self._storages = where, allowed, storages

    def find_class(self, module: str, name: str):
        fn = self._allowed.get((module, name))
        if fn is None:
            raise ConvertError(f'{self._where}: refused to unpickle global {module}.{name}: only numpy arrays, torch '
                               'tensors and plain containers (dict, list, tuple, OrderedDict) are admitted')
        return fn

    def persistent_load(self, pid):
        if self._storages is None:
            raise ConvertError(f'{self._where}: refused a persistent id (not a torch zip file)')
        return self._storages(pid)


def load_numpy_pickle(path: str | Path) -> Any:
    """A pickle of numpy arrays in plain containers (SERL's Flax parameters); anything else is refused."""
    with open(path, 'rb') as f:
        try:
            return _RestrictedUnpickler(f, str(path), {**_NUMPY_GLOBALS, **_CONTAINERS}).load()
        except ConvertError:
            raise
        except Exception as e:  # truncated / not a pickle
            raise ConvertError(f'{path}: cannot read as a pickle: {type(e).__name__}: {e}') from e


def load_torch_zip(path: str | Path) -> Any:
    """A torch.save file (zip format) of tensors in plain containers, without torch.load's general unpickler."""
    where = str(path)
    if not zipfile.is_zipfile(path):
        raise ConvertError(f'{where}: not a torch zip file (re-save it with torch.save in the default format, or '
                           'as safetensors)')
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
        if len(pkl) != 1:
            raise ConvertError(f'{where}: expected one data.pkl in the torch zip, found {len(pkl)}')
        root = pkl[0][:-len('data.pkl')]
        byteorder = zf.read(root + 'byteorder').decode().strip() if root + 'byteorder' in names else 'little'
        if byteorder != sys.byteorder:
            raise ConvertError(f'{where}: saved {byteorder}-endian, this machine is {sys.byteorder}-endian')
        cache: dict[str, torch.Tensor] = {}

        def storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                    and isinstance(pid[1], _StorageType)):
                raise ConvertError(f'{where}: unexpected persistent id {str(pid)[:80]!r}')
            _, stype, key, _location, _numel = pid
            key = str(key)
            if key not in cache:
                try:
                    data = zf.read(f'{root}data/{key}')
                except KeyError as e:
                    raise ConvertError(f'{where}: storage {key} missing from the zip') from e
                cache[key] = torch.frombuffer(bytearray(data), dtype=stype.dtype) if data else \
                    torch.empty(0, dtype=stype.dtype)
            return cache[key]

        allowed = {**_CONTAINERS,
                   ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
                   ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
                   **{('torch', n): _StorageType(dt) for n, dt in _TORCH_STORAGES.items()}}
        try:
            return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), where, allowed, storage).load()
        except ConvertError:
            raise
        except Exception as e:
            raise ConvertError(f'{where}: cannot read the torch zip pickle: {type(e).__name__}: {e}') from e


# ------------------------------------------------------------------------------------------------- layouts
def _flatten(tree: Any, where: str, prefix: str = '') -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if not isinstance(k, str):
            raise ConvertError(f'{where}: non-string key {k!r} at {prefix or "top level"}')
        out.update(_flatten(v, where, f'{prefix}{k}/'))
    return out


def serl_layout() -> dict[str, tuple[str, tuple[int, ...]]]:
    """SERL Flax leaf path -> (torchvision key, Flax shape), derived from the encoder's own GroupNorm layout."""
    names = {'conv_init/kernel': 'conv1.weight', 'norm_init/scale': 'bn1.weight', 'norm_init/bias': 'bn1.bias'}
    block = {'Conv_0/kernel': 'conv1.weight', 'MyGroupNorm_0/scale': 'bn1.weight', 'MyGroupNorm_0/bias': 'bn1.bias',
             'Conv_1/kernel': 'conv2.weight', 'MyGroupNorm_1/scale': 'bn2.weight', 'MyGroupNorm_1/bias': 'bn2.bias',
             'conv_proj/kernel': 'downsample.0.weight', 'norm_proj/scale': 'downsample.1.weight',
             'norm_proj/bias': 'downsample.1.bias'}
    tv = expected_checkpoint_keys('group')
    for i in range(4):  # Flax auto-names the blocks ResNetBlock_0..3 = torchvision's layer1..4
        names.update({f'ResNetBlock_{i}/{f}': f'layer{i + 1}.0.{t}' for f, t in block.items()
                      if f'layer{i + 1}.0.{t}' in tv})  # layer1 has no projection
    return {path: (key, (tv[key][2], tv[key][3], tv[key][1], tv[key][0]) if len(tv[key]) == 4 else tv[key])
            for path, key in names.items()}  # conv kernels: OIHW -> Flax HWIO


def _unwrap(tree: Any) -> Any:
    """Step into a lone 'params' level, and into 'pretrained_encoder' (an agent's encoder subtree)."""
    while isinstance(tree, Mapping):
        if set(tree) == {'params'}:
            tree = tree['params']
        elif 'pretrained_encoder' in tree and 'conv_init' not in tree:
            tree = tree['pretrained_encoder']
        else:
            break
    return tree


def _as_float_array(v: Any, where: str, key: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().float().numpy()
    if not isinstance(v, np.ndarray) or v.dtype.kind != 'f':
        raise ConvertError(f'{where}: {key} is {type(v).__name__}'
                           f'{" of dtype " + str(v.dtype) if isinstance(v, np.ndarray) else ""}, not a float array')
    return v


def serl_to_state(tree: Any, where: str) -> dict[str, torch.Tensor]:
    """SERL Flax parameter tree -> torchvision-named GroupNorm state dict (float32, OIHW)."""
    if not isinstance(tree, Mapping):
        raise ConvertError(f'{where}: expected a dict of parameters at the top level, got {type(tree).__name__}')
    flat = {k: v for k, v in _flatten(_unwrap(tree), where).items() if not k.startswith('output_head/')}
    layout = serl_layout()
    arrays = {k: _as_float_array(v, where, k) for k, v in flat.items()}
    problems = layout_problems({k: torch.empty(v.shape) for k, v in arrays.items()},
                               {k: shape for k, (_, shape) in layout.items()})
    if problems:
        raise ConvertError(f'{where}: not SERL\'s ResNet-10 parameter layout (resnetv1-10, GroupNorm): {problems}')
    state = {}
    for path, (key, _) in layout.items():
        a = torch.from_numpy(np.ascontiguousarray(arrays[path], dtype=np.float32))
        state[key] = a.permute(3, 2, 0, 1).contiguous() if a.ndim == 4 else a  # HWIO -> OIHW
    return state


def _pick_state_dict(obj: Any, key: str, where: str) -> Mapping[str, Any]:
    if key:
        for part in key.split('/'):
            if not isinstance(obj, Mapping) or part not in obj:
                raise ConvertError(f'{where}: no entry {part!r} for --key {key!r}')
            obj = obj[part]
    elif isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for cand in ('state_dict', 'model'):
            if isinstance(obj.get(cand), Mapping):
                obj = obj[cand]
                break
    if not isinstance(obj, Mapping):
        raise ConvertError(f'{where}: expected a state dict (mapping name -> tensor), got {type(obj).__name__}')
    return obj


def torchvision_to_state(sd: Mapping[str, Any], where: str, norm: str = 'auto',
                         prefix: str = '') -> tuple[dict[str, torch.Tensor], str]:
    """torchvision-named state dict -> (the encoder's trunk state, norm)."""
    state, unexpected = {}, {}
    for k, v in sd.items():
        if prefix:
            if not k.startswith(prefix):
                unexpected[k] = v
                continue
            k = k[len(prefix):]
        if k in ('fc.weight', 'fc.bias') or k.endswith('num_batches_tracked'):
            continue
        state[k] = v
    if norm == 'auto':
        norm = 'batch' if any(k.endswith('running_mean') for k in state) else 'group'
    tensors = {}
    for k, v in {**state, **unexpected}.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(v, torch.Tensor):
            raise ConvertError(f'{where}: {k} is a {type(v).__name__}, not a tensor')
        tensors[k] = v
    problems = layout_problems(tensors, expected_checkpoint_keys(norm))
    if problems:
        raise ConvertError(f'{where}: not the torchvision ResNet-10 {norm}-norm layout'
                           f'{" (prefix " + repr(prefix) + ")" if prefix else ""}: {problems}')
    return {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, norm


# -------------------------------------------------------------------------------------------------- convert
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def convert(src: str | Path, out: str | Path, *, source: str = 'auto', norm: str = 'auto', padding: str = 'auto',
            prefix: str = '', key: str = '', image_size: int = 128) -> dict[str, Any]:
    """Convert `src` into the encoder's safetensors at `out`; returns the written metadata."""
    src = Path(src).expanduser()
    where = str(src)
    if not src.is_file():
        raise ConvertError(f'{where}: no such file')
    if source == 'auto':
        source = 'serl' if src.suffix.lower() in ('.pkl', '.pickle') else 'torchvision'
    if source == 'serl':
        if norm not in ('auto', 'group'):
            raise ConvertError(f'{where}: SERL\'s ResNet-10 is GroupNorm; --norm {norm} does not apply')
        state, norm = serl_to_state(load_numpy_pickle(src), where), 'group'
        padding = 'same' if padding == 'auto' else padding  # what Flax's nn.Conv / max_pool 'SAME' computed
    elif source == 'torchvision':
        if src.suffix.lower() == '.safetensors':
            from safetensors.torch import load_file
            try:
                obj = load_file(str(src))
            except Exception as e:
                raise ConvertError(f'{where}: cannot read as safetensors: {e}') from e
        else:
            obj = load_torch_zip(src)
        state, norm = torchvision_to_state(_pick_state_dict(obj, key, where), where, norm, prefix)
        padding = 'torch' if padding == 'auto' else padding
    else:
        raise ConvertError(f'unknown source format {source!r} (serl | torchvision)')
    meta = save_checkpoint(out, state, norm=norm, padding=padding, image_size=image_size,
                           source=f'poco_convert_encoder from {source}: {src.name} sha256 {_sha256(src)[:16]}')
    # the loader must accept what we wrote and give finite features
    enc = ImageEncoder(EncoderConfig(checkpoint_path=str(out), image_size=image_size, device='cpu'))
    probe = np.random.default_rng(0).integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    if not np.all(np.isfinite(enc.encode(probe))):
        raise ConvertError(f'{out}: the converted encoder gives non-finite features')
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='poco_convert_encoder', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('src', help='SERL resnet10_params.pkl, or a torchvision-layout .safetensors / .pth / .pt')
    p.add_argument('out', help='output safetensors (the encoder checkpoint)')
    p.add_argument('--from', dest='source', default='auto', choices=['auto', 'serl', 'torchvision'])
    p.add_argument('--norm', default='auto', choices=['auto', 'batch', 'group'])
    p.add_argument('--padding', default='auto', choices=['auto', 'torch', 'same'],
                   help="auto: 'same' for SERL (Flax), 'torch' otherwise")
    p.add_argument('--prefix', default='', help="key prefix to strip (torchvision), e.g. 'backbone.'")
    p.add_argument('--key', default='', help="nested entry holding the state dict, e.g. 'state_dict' or 'a/b'")
    p.add_argument('--image-size', type=int, default=128, help='image size recorded with the fingerprint')
    return p


def main(argv=None) -> int:
    import logging
    logging.basicConfig(level=logging.ERROR)  # the loader's info lines are not for this tool's output
    args = build_parser().parse_args(argv)
    try:
        meta = convert(args.src, args.out, source=args.source, norm=args.norm, padding=args.padding,
                       prefix=args.prefix, key=args.key, image_size=args.image_size)
    except (ConvertError, ValueError, OSError) as e:
        print(f'poco_convert_encoder: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}',
              file=sys.stderr)
        return 1
    print(f"poco_convert_encoder: wrote {args.out} (norm={meta['norm']}, padding={meta['padding']}, "
          f"fingerprint {meta['fingerprint']} at image_size {meta['image_size']}); use it with "
          f"encoder.checkpoint_path={args.out} (learner) / encoder_checkpoint:={args.out} (policy node)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
