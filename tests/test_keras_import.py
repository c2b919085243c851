"""``import_keras``: weights saved by the Keras example's Keras 3 code give the same predictions in PyTorch."""

import os

import h5py
import numpy as np
import pytest
import torch

from eanet.errors import EanetError
from eanet.keras_import import import_keras

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
import keras_seed  # noqa: E402  (tests/keras_seed.py; needs keras)

# Keras' torch backend turns tensors to numpy with np.array(tensor) when saving: numpy 2 warns.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

KINDS = {"eanet_keras": "external_attention", "vit_keras": "self_attention"}


def _images(rng, n):
    """uint8-range images with clearly different channel means (R bright, G dark, B mid)."""
    low, high = np.array([60, 0, 100]), np.array([256, 140, 220])
    return rng.integers(low, high, size=(n, 32, 32, 3)).astype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each seed model built once with random weights, saved both ways, with its Keras output."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out, images = {}, _images(rng, 6)
    for name, attention_type in KINDS.items():
        model = keras_seed.build_model(attention_type, adapt_on=_images(rng, 64))
        keras_seed.perturb(model, rng)
        folder = tmp_path_factory.mktemp(name)
        model.save_weights(folder / "seed.weights.h5")
        model.save(folder / "seed.keras")
        probs = keras.ops.convert_to_numpy(model(images, training=False))
        out[name] = dict(folder=folder, probs=probs, model=model)
    return images, out


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_import_matches_keras(saved, name, fmt):
    images, out = saved
    net = import_keras(out[name]["folder"] / f"seed.{fmt}", model=name)
    assert not net.training
    with torch.no_grad():
        probs = net(torch.from_numpy(images).permute(0, 3, 1, 2)).softmax(-1).numpy()
    reference = out[name]["probs"]
    assert reference.max() > 0.05  # far from uniform: the comparison means something
    assert np.abs(probs - reference).max() <= 1e-4
    # Two biases cannot change the output (a constant added before a softmax over the axis it is
    # constant on): external attention's M_k bias and self-attention's key bias. Compare them directly.
    layers = out[name]["model"].layers
    if name == "eanet_keras":
        m_k = [layer.bias for layer in layers if isinstance(layer, keras.layers.Dense)][1::6]
        ours = [block.mixer.memory_k.bias for block in net.blocks]
    else:
        m_k = [layer.key_dense.bias for layer in layers if isinstance(layer, keras.layers.MultiHeadAttention)]
        ours = [block.mixer.qkv.bias[256:512] for block in net.blocks]
    assert len(m_k) == len(ours) == 8
    for theirs, mine in zip(m_k, ours, strict=True):
        np.testing.assert_array_equal(mine.detach().numpy(), keras.ops.convert_to_numpy(theirs).reshape(-1))


@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_wrong_model_kind(saved, fmt):
    _, out = saved
    with pytest.raises(EanetError, match="MultiHeadAttention.*vit_keras"):
        import_keras(out["vit_keras"]["folder"] / f"seed.{fmt}", model="eanet_keras")
    with pytest.raises(EanetError, match="eanet_keras"):
        import_keras(out["eanet_keras"]["folder"] / f"seed.{fmt}", model="vit_keras")


def test_not_a_keras_file(tmp_path):
    text = tmp_path / "notes.weights.h5"
    text.write_text("not weights")
    with pytest.raises(EanetError, match="not a Keras file"):
        import_keras(text)
    with pytest.raises(EanetError, match="not found"):
        import_keras(tmp_path / "absent.keras")


def _edited(src, dst, edit):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _reshape(f):
    del f["layers/dense_3/vars/0"]
    f["layers/dense_3/vars/0"] = np.zeros((256, 32), "float32")


@pytest.mark.parametrize(("edit", "message", "overrides"), [
    (lambda f: f.__delitem__("layers/dense_3"), "missing layer layers/dense_3", {}),
    (_reshape, r"dense_3 kernel gives shape \(32, 256\)", {}),
    (lambda f: None, "nothing for 2 tensor", {"final_norm": True}),
    (lambda f: None, r"49 Dense layers where eanet_keras \(depth 6\) needs 37", {"depth": 6}),
])
def test_bad_files(saved, tmp_path, edit, message, overrides):
    src = saved[1]["eanet_keras"]["folder"] / "seed.weights.h5"
    with pytest.raises(EanetError, match=message):
        import_keras(_edited(src, tmp_path / "w.weights.h5", edit), **overrides)


def test_cli_import_keras_saves_a_loadable_model(saved, tmp_path, capsys):
    import eanet
    from eanet.cli import main

    images, out = saved
    main(["import-keras", str(out["vit_keras"]["folder"] / "seed.keras"), "--model", "vit_keras",
          "--out", str(tmp_path / "vit")])
    assert "imported" in capsys.readouterr().out
    model = eanet.load_model(tmp_path / "vit")
    with torch.no_grad():
        probs = model(torch.from_numpy(images).permute(0, 3, 1, 2)).softmax(-1).numpy()
    assert np.abs(probs - out["vit_keras"]["probs"]).max() <= 1e-4
    with pytest.raises(SystemExit) as exit_info:  # ViT weights into EANet: one line, exit 1
        main(["import-keras", str(out["vit_keras"]["folder"] / "seed.keras"), "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_faulty_keras_files_are_one_line_and_nothing_is_written(saved, tmp_path, capsys):
    """Weights full of NaN, a .keras whose weights member is not HDF5, one whose member claims a huge size,
    and an --out folder holding the user's files: one line each, nothing written."""
    import zipfile

    from eanet.cli import main
    from eanet.keras_import import MAX_MEMBER_BYTES

    src = saved[1]["eanet_keras"]["folder"]
    nan = _edited(src / "seed.weights.h5", tmp_path / "nan.weights.h5",
                  lambda f: f["layers/dense_3/vars/0"].__setitem__(..., np.nan))
    not_hdf5 = tmp_path / "not-hdf5.keras"
    with zipfile.ZipFile(not_hdf5, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"this is not HDF5")
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        with z.open("model.weights.h5", "w", force_zip64=True) as member:  # highly compressible zeros
            chunk = bytes(1 << 24)
            for _ in range(MAX_MEMBER_BYTES // len(chunk) + 1):
                member.write(chunk)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}\n')
    cases = [(nan, tmp_path / "a", "holds non-finite values"), (not_hdf5, tmp_path / "b", "is not an HDF5 file"),
             (bomb, tmp_path / "c", "unpacks to"), (src / "seed.keras", user, "not a model folder eanet wrote")]
    for path, out, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["import-keras", str(path), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and err.startswith("error:") and len(err.splitlines()) == 1, err
        assert message in err, (path.name, err)
        assert out == user or not out.exists()
    assert (user / "config.json").read_text() == '{"mine": true}\n' and len(list(user.iterdir())) == 1
    # a folder eanet wrote may be written again
    main(["import-keras", str(src / "seed.keras"), "--out", str(tmp_path / "again")])
    main(["import-keras", str(src / "seed.keras"), "--out", str(tmp_path / "again")])
