"""Read weights saved by the Keras example's own code into our PyTorch :class:`~eanet.models.EANet`.

Two formats, both Keras 3, read with ``h5py`` (and ``zipfile``) only, never with Keras itself:

- ``model.save_weights("x.weights.h5")``: an HDF5 file.
- ``model.save("x.keras")``: a zip holding ``config.json`` and ``model.weights.h5`` (same layout).

**How Keras 3 names the groups.** Keras does not address a layer by its ``name`` (``dense_17``
depends on how many layers the session created before). It walks ``model.layers`` in order and
gives each layer ``snake_case(class name)``, de-duplicated by a counter *per class*: the first
``Dense`` is ``layers/dense``, the next ``layers/dense_1``, ... A layer's own variables sit in
``<group>/vars/0, 1, ...`` in creation order; sub-layers held as attributes nest under the attribute
name (``layers/patch_embedding/proj/vars/0``), and a nested ``Sequential`` lists its layers again
(``layers/sequential/layers/normalization/vars/0``). ``model.layers`` of the Keras example's functional
model is its call order, so the k-th ``Dense`` of the file is the k-th ``Dense`` the Keras example applies.

**How we recover that order.** For a ``.keras`` file we replay this naming rule over the layer list
of ``config.json`` (operations such as ``ops.reshape`` are listed there but are not saved layers, so
they are skipped). For a bare ``.weights.h5`` the rule is inverted: ``layers/dense_<k>`` is the
k-th Dense (no suffix = 0), so sorting each class's groups by their numeric suffix gives the order;
the suffixes must run 0..n-1 without a gap. This is the rule Keras' own ``load_weights`` relies on.

**The mapping** (seed layer -> our parameter; Keras kernels are ``(in, out)``, ours ``(out, in)``):

=============================================  ================================================
``data_augmentation`` > ``Normalization``      ``set_input_stats(mean, variance)`` (vars 0, 1;
                                               the count, var 2, is ignored)
``PatchEmbedding.proj`` ``Dense(12 -> 64)``    ``stem.proj`` Conv2d 2x2/2: ``weight[o, c, i, j] =
                                               kernel[(i*2 + j)*3 + c, o]`` (``extract_patches``
                                               orders a patch's values row, column, channel)
``PatchEmbedding.pos_embed`` ``Embedding``     ``pos_embed[0]``
per block b: ``LayerNormalization`` 2b, 2b+1   ``blocks.b.norm1``, ``norm2`` (gamma, beta)
EANet block b: ``Dense`` 6b .. 6b+5            ``mixer.expand``, ``mixer.memory_k`` (M_k),
                                               ``mixer.memory_v`` (M_v), ``mixer.proj``,
                                               ``mlp.fc1``, ``mlp.fc2``
ViT block b: ``MultiHeadAttention`` b          ``mixer.qkv`` = [query | key | value], each kernel
                                               ``(64, heads, head_dim)`` flattened head-major;
                                               ``mixer.proj`` from ``output`` ``(heads, head_dim, 64)``
ViT block b: ``Dense`` 2b, 2b+1                ``mlp.fc1``, ``mlp.fc2``
last ``Dense(100)``                            ``head``
=============================================  ================================================

Every parameter and buffer of the PyTorch model is assigned exactly once, and every weight of the
file is used (except the Normalization count and random-layer seed states); anything else is an
:class:`~eanet.errors.EanetError` with a one-line message.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import torch

from eanet.errors import EanetError, one_line
from eanet.hub import check_finite
from eanet.layers import PatchEmbed
from eanet.models import EANet, create_model

__all__ = ["import_keras"]


def _snake(class_name: str) -> str:
    """Keras' ``to_snake_case``: ``LayerNormalization`` -> ``layer_normalization``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class _KerasWeights:
    """The weight groups of one saved Keras model, addressed the way Keras' loader addresses them."""

    def __init__(self, h5: h5py.File, source: str, config: dict | None):
        self.h5, self.source, self.used = h5, source, set()
        if "layers" not in h5:
            raise EanetError(f"{source} is not a Keras 3 model's weights file (no 'layers' group)")
        self.order: dict[str, list[str]] = defaultdict(list)  # snake class -> group names, model order
        if config is not None:
            inner = config.get("config") if isinstance(config, dict) else None
            layers = inner.get("layers") if isinstance(inner, dict) else None
            if not isinstance(layers, list):
                raise EanetError(f"{source}: config.json does not describe a functional Keras model")
            for layer in layers:
                if str(layer.get("module", "")).startswith("keras.src.ops"):
                    continue  # an op such as ops.reshape: not a layer, nothing saved
                cls = _snake(layer.get("class_name", ""))
                k = len(self.order[cls])
                self.order[cls].append(cls if k == 0 else f"{cls}_{k}")
        else:
            top = defaultdict(int)  # snake class -> 1 + highest counter suffix seen
            for name in h5["layers"]:
                base, _, k = name.rpartition("_")
                cls, k = (base, int(k)) if base and k.isdigit() else (name, 0)
                top[cls] = max(top[cls], k + 1)
            for cls, n in top.items():
                self.order[cls] = [cls] + [f"{cls}_{k}" for k in range(1, n)]

    def layers(self, cls: str) -> list[str]:
        """Paths of the top-level layers of snake-case class ``cls``, in the model's order."""
        paths = [f"layers/{name}" for name in self.order.get(cls, [])]
        for path in paths:
            if path not in self.h5:
                raise EanetError(f"{self.source}: missing layer {path}")
        return paths

    def take(self, path: str, ndim: int) -> np.ndarray:
        """The array at ``path`` as float32, checked to have ``ndim`` dimensions; marks it used."""
        if path not in self.h5 or not isinstance(self.h5[path], h5py.Dataset):
            raise EanetError(f"{self.source}: missing weight {path}")
        value = np.asarray(self.h5[path], dtype=np.float32)
        if value.ndim != ndim:
            raise EanetError(f"{self.source}: {path} has shape {value.shape}, expected {ndim} dimensions")
        self.used.add(path)
        return value

    def unused(self) -> list[str]:
        """Weights of the file no one took (Normalization counts and seed states do not count)."""
        left: list[str] = []

        def visit(name: str, obj) -> None:
            path = f"layers/{name}"
            ignored = "seed_generator" in path or re.search(r"/normalization(_\d+)?/vars/2$", path)
            if isinstance(obj, h5py.Dataset) and path not in self.used and not ignored:
                left.append(path)

        self.h5["layers"].visititems(visit)
        return left


MAX_MEMBER_BYTES = 1 << 30  # a .keras member bigger than this is not a save of the Keras example's models


def _open(path: Path) -> tuple[h5py.File, dict | None]:
    """The weights (and, for ``.keras``, the config) of a Keras 3 file, recognised by content."""
    if not path.is_file():
        raise EanetError(f"Keras weights file not found: {path}")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                for name in ("config.json", "model.weights.h5"):
                    size = archive.getinfo(name).file_size
                    if size > MAX_MEMBER_BYTES:  # a compression bomb would otherwise be read whole into memory
                        raise EanetError(f"{path}: {name} unpacks to {size:,} bytes, more than any Keras save "
                                         f"of these models ({MAX_MEMBER_BYTES:,} at most)")
                config = json.loads(archive.read("config.json"))
                data = archive.read("model.weights.h5")
        except (KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError,
                zlib.error, NotImplementedError) as exc:
            raise EanetError(f"{path} is not a .keras model file (needs config.json and "
                             f"model.weights.h5): {one_line(exc)}") from None
        if not isinstance(config, dict):
            raise EanetError(f"{path}: its config.json is not a Keras model configuration")
        try:
            return h5py.File(io.BytesIO(data), "r"), config
        except OSError as exc:
            raise EanetError(f"{path}: its model.weights.h5 is not an HDF5 file ({one_line(exc)})") from None
    if h5py.is_hdf5(path):
        try:
            return h5py.File(path, "r"), None
        except OSError as exc:
            raise EanetError(f"cannot read HDF5 file {path}: {one_line(exc)}") from None
    raise EanetError(f"{path} is not a Keras file: expected a .weights.h5 (HDF5) or a .keras (zip) file")


def import_keras(path: str | Path, *, model: str = "eanet_keras", **overrides) -> EANet:
    """Build ``eanet.create_model(model, **overrides)`` and fill it with a Keras 3 save of the Keras example.

    ``path`` is what the Keras example's ``model.save_weights`` (``.weights.h5``) or ``model.save``
    (``.keras``) wrote. Returns the model in ``eval()`` mode; its logits' softmax is the Keras
    model's output. Raises :class:`EanetError` on anything that does not fit.
    """
    path = Path(path)
    try:
        net = create_model(model, **overrides)
    except (TypeError, ValueError) as exc:
        raise EanetError(f"cannot build model {model!r}: {exc}") from None
    if not isinstance(net, EANet) or not isinstance(net.stem, PatchEmbed):
        raise EanetError(f"model {model!r} is not a patch-embedding EANet: the Keras example's weights do not fit it")
    h5, config = _open(path)
    try:
        with h5:
            _fill(net, _KerasWeights(h5, str(path), config), model)
    except (OSError, KeyError, ValueError, TypeError) as exc:  # a damaged HDF5 file, or one of another shape
        raise EanetError(f"cannot read the weights in {path}: {one_line(exc)}") from None
    check_finite(net.state_dict(), str(path))
    return net.eval()


def _fill(net: EANet, kw: _KerasWeights, model_name: str) -> None:
    """Map every tensor of ``kw`` onto ``net``: the table in the module docstring."""
    targets = dict(net.named_parameters()) | dict(net.named_buffers())
    assigned: set[str] = set()

    def put(name: str, value: np.ndarray, origin: str) -> None:
        if name not in targets:
            raise EanetError(f"{kw.source}: {origin} has no counterpart {name!r} in model {model_name}")
        if name in assigned:
            raise RuntimeError(f"keras import: {name} assigned twice")  # a bug in this mapping
        target = targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise EanetError(f"{kw.source}: {origin} gives shape {tuple(value.shape)} but {name} of "
                             f"model {model_name} is {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        assigned.add(name)

    def dense(group: str, module: str) -> None:
        put(f"{module}.weight", kw.take(f"{group}/vars/0", 2).T, f"{group} kernel")
        put(f"{module}.bias", kw.take(f"{group}/vars/1", 1), f"{group} bias")

    external = net.attention == "external"
    depth = len(net.blocks)
    mha, dense_layers, norms = kw.layers("multi_head_attention"), kw.layers("dense"), kw.layers("layer_normalization")
    if external and mha:
        raise EanetError(f"{kw.source} holds the ViT baseline (MultiHeadAttention), not {model_name}'s "
                         "external attention: import it as vit_keras")
    if not external and not mha:
        raise EanetError(f"{kw.source} holds no MultiHeadAttention (an EANet?), so it does not fit "
                         f"{model_name}: import it as eanet_keras")
    per_block = 6 if external else 2
    for cls, found, wanted in (("Dense", dense_layers, depth * per_block + 1),
                               ("LayerNormalization", norms, 2 * depth),
                               ("MultiHeadAttention", mha, 0 if external else depth)):
        if len(found) != wanted:
            raise EanetError(f"{kw.source} has {len(found)} {cls} layers where {model_name} "
                             f"(depth {depth}) needs {wanted}")

    # data_augmentation > Normalization: adapted mean and variance (std = max(sqrt(var), 1e-7)).
    stats = [p for p in (*kw.layers("normalization"), *(f"{s}/layers/normalization" for s in kw.layers("sequential")))
             if p in kw.h5]
    if len(stats) != 1:
        raise EanetError(f"{kw.source}: expected one adapted Normalization layer, found {len(stats)}")
    mean, var = kw.take(f"{stats[0]}/vars/0", 1), kw.take(f"{stats[0]}/vars/1", 1)
    if mean.shape != (net.normalize.mean.numel(),) or var.shape != mean.shape:
        raise EanetError(f"{kw.source}: Normalization statistics of shape {mean.shape} do not fit "
                         f"{net.normalize.mean.numel()} input channels")
    net.set_input_stats(mean.tolist(), var.tolist())
    assigned |= {"normalize.mean", "normalize.std"}

    # PatchEmbedding: Dense on (row, col, channel)-ordered patches == Conv2d(k=stride=p).
    conv = net.stem.proj
    p, c = net.stem.patch_size, conv.in_channels
    kernel = kw.take("layers/patch_embedding/proj/vars/0", 2)
    if kernel.shape[0] != p * p * c:
        raise EanetError(f"{kw.source}: patch kernel {kernel.shape} does not fit {p}x{p} patches of {c} channels")
    put("stem.proj.weight", kernel.reshape(p, p, c, -1).transpose(3, 2, 0, 1), "patch_embedding/proj kernel")
    put("stem.proj.bias", kw.take("layers/patch_embedding/proj/vars/1", 1), "patch_embedding/proj bias")
    put("pos_embed", kw.take("layers/patch_embedding/pos_embed/vars/0", 2)[None], "patch_embedding/pos_embed")

    for b in range(depth):
        blk = f"blocks.{b}"
        for i, norm in enumerate(("norm1", "norm2")):
            group = norms[2 * b + i]
            put(f"{blk}.{norm}.weight", kw.take(f"{group}/vars/0", 1), f"{group} gamma")
            put(f"{blk}.{norm}.bias", kw.take(f"{group}/vars/1", 1), f"{group} beta")
        if external:
            names = ("mixer.expand", "mixer.memory_k", "mixer.memory_v", "mixer.proj", "mlp.fc1", "mlp.fc2")
        else:
            names = ("mlp.fc1", "mlp.fc2")
            group = mha[b]
            kernels = [kw.take(f"{group}/{n}_dense/vars/0", 3) for n in ("query", "key", "value")]
            biases = [kw.take(f"{group}/{n}_dense/vars/1", 2) for n in ("query", "key", "value")]
            put(f"{blk}.mixer.qkv.weight", np.concatenate([k.reshape(k.shape[0], -1).T for k in kernels]),
                f"{group} query/key/value kernels")
            put(f"{blk}.mixer.qkv.bias", np.concatenate([x.reshape(-1) for x in biases]),
                f"{group} query/key/value biases")
            out = kw.take(f"{group}/output_dense/vars/0", 3)
            put(f"{blk}.mixer.proj.weight", out.reshape(-1, out.shape[-1]).T, f"{group} output kernel")
            put(f"{blk}.mixer.proj.bias", kw.take(f"{group}/output_dense/vars/1", 1), f"{group} output bias")
        for i, module in enumerate(names):
            dense(dense_layers[per_block * b + i], f"{blk}.{module}")
    dense(dense_layers[-1], "head")

    missing = sorted(set(targets) - assigned)
    if missing:
        raise EanetError(f"{kw.source} has nothing for {len(missing)} tensor(s) of model {model_name}: "
                         f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    left = kw.unused()
    if left:
        raise EanetError(f"{kw.source} has {len(left)} weight(s) model {model_name} has no place for: "
                         f"{', '.join(left[:4])}{' ...' if len(left) > 4 else ''}")
