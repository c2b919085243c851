"""model.attention_maps and `eanet attention`: shapes for every family, the paper's maths, the command."""

import pytest
import torch
from PIL import Image

import eanet
from eanet.cli import main
from eanet.layers import double_normalize

ALL_MODELS = eanet.list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_maps_have_one_grid_per_head_and_unit(name):
    torch.manual_seed(0)
    model = eanet.create_model(name, num_classes=7).train()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    maps = model.attention_maps(x)
    rows, cols = model.stem.output_size(32, 32)
    assert len(maps) == len(model.blocks) and model.training  # the model's mode is restored
    mixer = model.blocks[0].mixer
    units = mixer.memory_size if model.attention == "external" else 1
    for m in maps:
        assert m.shape == (2, mixer.num_heads, units, rows, cols)
        assert torch.isfinite(m).all() and (m >= 0).all()
        if model.attention == "external":  # L1 over the S units of each head, at every token
            torch.testing.assert_close(m.sum(dim=2), torch.ones(2, mixer.num_heads, rows, cols), atol=1e-5, rtol=0)
        else:  # the attention each token receives, averaged over queries: a distribution over the grid
            torch.testing.assert_close(m.sum(dim=(3, 4)), torch.ones(2, mixer.num_heads, 1), atol=1e-5, rtol=0)


def test_external_maps_are_the_papers_double_normalisation():
    """Block 1's map recomputed from the layers' parameters: softmax over the N tokens of F M_k^T (each unit's
    weights sum to 1 over the image), then L1 over the S units."""
    torch.manual_seed(0)
    model = eanet.create_model("eanet_keras").eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        tokens = model.stem(model.normalize(x)) + model.pos_embed
        mixer = model.blocks[0].mixer
        feats = mixer.expand(model.blocks[0].norm1(tokens)).view(2, 256, mixer.num_heads, mixer.head_dim)
        logits = mixer.memory_k(feats)  # (B, N, heads, S)
        per_unit = logits.softmax(dim=1)
        torch.testing.assert_close(per_unit.sum(dim=1), torch.ones(2, mixer.num_heads, mixer.memory_size))
        expected = per_unit / (1e-9 + per_unit.sum(dim=-1, keepdim=True))
    torch.testing.assert_close(double_normalize(logits, token_dim=1), expected)
    maps = model.attention_maps(x)
    torch.testing.assert_close(maps[0], expected.permute(0, 2, 3, 1).reshape(2, 16, 16, 16, 16))


@pytest.mark.parametrize("name", ["eanet_keras", "vit_keras", "eanet_conv_small"])
def test_the_maps_come_from_the_same_network_the_fast_path_runs(name):
    """The blocks' outputs along the attention-map path equal forward_features (fused kernels included)."""
    torch.manual_seed(0)
    model = eanet.create_model(name).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        tokens = model.stem(model.normalize(x)) + model.position_embedding(32, 32)
        for block in model.blocks:
            tokens, _ = block(tokens, return_attention=True)
        torch.testing.assert_close(model.norm(tokens), model.forward_features(x), atol=1e-4, rtol=1e-4)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = eanet.create_model("eanet_keras", depth=2, num_classes=3, class_names=["ant", "bee", "cow"])
    model.save_pretrained(tmp_path / "model")
    image = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy()).save(image)
    return tmp_path / "model", image


def test_the_command_writes_one_png_per_image(saved, tmp_path, capsys):
    model, image = saved
    main(["attention", str(model), str(image), "--out", str(tmp_path / "maps"), "--top", "2"])
    out = tmp_path / "maps" / "photo-attention.png"
    assert out.is_file() and "photo-attention.png" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.size[0] > 300 and png.size[1] > 300  # two rows (blocks) of 4 panels
    main(["attention", str(model), str(image), "--out", str(tmp_path / "maps")])  # its own map is redrawn
    assert out.is_file() and "photo-attention.png" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["attention", str(model), str(image), "--out", str(tmp_path / "m2"), "--blocks", "3"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --blocks must name blocks 1 to 2") and len(err.splitlines()) == 1
