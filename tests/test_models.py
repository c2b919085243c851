"""The registry, the uniform model API, parameter counts, and saving in the Hugging Face layout."""

import json

import pytest
import torch

import eanet
from eanet.models.inspect import count_macs, count_parameters, layer_table

ALL_MODELS = eanet.list_models()


def test_seed_parameter_counts():
    # counted from the Keras models of the example (trainable parameters)
    assert count_parameters(eanet.create_model("eanet_keras")) == 361_380
    assert count_parameters(eanet.create_model("vit_keras")) == 623_268


def test_registry_lists_the_seed_models_and_an_s64_variant():
    assert {"eanet_keras", "vit_keras", "eanet_s64"} <= set(ALL_MODELS)
    assert eanet.create_model("eanet_s64").blocks[0].mixer.memory_size == 64
    assert eanet.list_models("vit_*") == ["vit_conv_medium", "vit_conv_small", "vit_keras"]
    with pytest.raises(ValueError, match="unknown model"):
        eanet.create_model("no_such_model")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = eanet.create_model(name, num_classes=10)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 10)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_uniform_api(name):
    model = eanet.create_model(name).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    feats = model.forward_features(images)
    assert feats.shape == (3, model.num_tokens, model.embed_dim)
    torch.testing.assert_close(model.forward_head(feats), model(images))
    assert model.forward_head(feats, pre_logits=True).shape == (3, model.embed_dim)
    model.reset_classifier(7)
    assert model(images).shape == (3, 7)
    model.reset_classifier(0)
    assert model(images).shape == (3, model.embed_dim)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        model.reset_classifier(-1)


def test_overrides_and_conv_stem():
    model = eanet.create_model("eanet_keras", stem="conv", stem_channels=[16, 32], stem_strides=[2, 2],
                               depth=2, final_norm=True, num_classes=5)
    assert model.num_tokens == 64
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_conv_stem_activation_is_chosen_saved_and_checked(tmp_path):
    kwargs = dict(stem="conv", stem_channels=[8, 16], stem_strides=[2, 2], embed_dim=16, depth=1, num_heads=4,
                  mlp_dim=16, num_classes=3)
    torch.manual_seed(0)
    relu = eanet.create_model("eanet_keras", stem_act="relu", **kwargs).eval()
    acts = [type(m) for m in relu.stem.body if not isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    assert acts == [torch.nn.ReLU, torch.nn.ReLU]
    # the stem's features are non-negative before the 1x1 projection; with GELU they are not
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert relu.stem.body[:-1](relu.normalize(x)).min() >= 0
    torch.manual_seed(0)
    gelu = eanet.create_model("eanet_keras", **kwargs).eval()
    assert gelu.stem.body[:-1](gelu.normalize(x)).min() < 0
    relu.save_pretrained(tmp_path / "saved")  # the choice travels in config.json
    loaded = eanet.EANet.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(loaded(x), relu(x))
    with pytest.raises(ValueError, match="stem_act must be one of gelu, relu, got 'tanh'"):
        eanet.create_model("eanet_keras", stem_act="tanh", **kwargs)


def test_uint8_and_float_pixels_give_the_same_logits():
    model = eanet.create_model("eanet_keras").eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(model(images), model(images.float()))


def test_input_stats_follow_keras_normalization():
    model = eanet.create_model("eanet_keras")
    model.set_input_stats([10.0, 20.0, 30.0], [4.0, 0.0, 9.0])
    assert model.normalize.mean.flatten().tolist() == [10.0, 20.0, 30.0]
    assert model.normalize.std.flatten().tolist() == pytest.approx([2.0, 1e-7, 3.0])


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = eanet.create_model("eanet_keras", num_classes=10, class_names=[f"c{i}" for i in range(10)])
    model.set_input_stats([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["num_classes"] == 10 and config["attention"] == "external"
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for loaded in (eanet.load_model(tmp_path / "saved"), eanet.EANet.from_pretrained(tmp_path / "saved").eval()):
        assert not loaded.training
        assert loaded.class_names == [f"c{i}" for i in range(10)]
        torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)


def test_load_model_errors_are_one_line(tmp_path):
    with pytest.raises(eanet.EanetError, match="not found"):
        eanet.load_model(tmp_path / "missing")
    with pytest.raises(eanet.EanetError, match="no config.json"):
        eanet.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(eanet.EanetError, match="cannot read"):
        eanet.load_model(tmp_path)


def test_counts_and_layer_table():
    model = eanet.create_model("eanet_keras")
    # 8 blocks x (expand 256*64*256 + two memories 2*256*16*16*16 + proj 256*256*64 + MLP 2*256*64*64)
    # + patch embedding 256*12*64 + head 64*100
    expected = 8 * (4_194_304 + 2 * 1_048_576 + 4_194_304 + 2 * 1_048_576) + 196_608 + 6_400
    assert count_macs(model) == expected
    rows = layer_table(model)
    assert sum(r[3] for r in rows) == count_parameters(model)
    assert ("head", "Linear", (1, 100), 6_500) in rows


def test_vit_macs_include_attention():
    model = eanet.create_model("vit_keras")
    per_block_attention = 2 * 4 * 256 * 256 * 64  # q k^T and A v, 4 heads of 64
    without = 8 * (256 * 64 * 768 + 256 * 256 * 64 + 2 * 256 * 64 * 64) + 196_608 + 6_400
    assert count_macs(model) == without + 8 * per_block_attention


@pytest.mark.parametrize("name", ["eanet_keras", "vit_keras"])
def test_torch_compile_traces_the_model_in_one_graph(name):
    """The kernel gates are constants to ``torch.compile`` (as ``torch.compiler.assume_constant_result``
    makes them, without importing ``torch._dynamo`` when eanet is imported): the whole training step traces
    as one graph, with the same loss and gradients as eager mode."""
    from eanet.layers.kernels import build, gate

    def marked(fn):
        return {k: v for k, v in vars(fn).items() if k.startswith("_dynamo")}

    def probe():
        return True

    assert marked(build.fused_kernels_available) == marked(torch.compiler.assume_constant_result(probe))
    assert marked(gate.bf16_kernels_available) == marked(probe)

    torch.manual_seed(0)
    model = eanet.create_model(name).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])

    def step(images):
        return torch.nn.functional.cross_entropy(model(images), y)

    losses, grads = [], []
    for run in (step, torch.compile(step, backend="eager", fullgraph=True)):
        torch.manual_seed(1)  # the same dropout masks
        model.zero_grad()
        loss = run(x)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[1], losses[0])
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want)
