"""The Keras example's EANet and its ViT baseline, rebuilt with Keras 3 for the import tests.

Same layers, applied in the same order, with the same settings as the example's ``get_model``:
a file saved from here is laid out exactly as one saved by the example's own code. Class names
(``PatchExtract``, ``PatchEmbedding``) and the attribute names ``proj`` / ``pos_embed`` are part
of that layout (Keras names the weight groups after them), so they are kept. Import Keras only
after choosing its backend (``KERAS_BACKEND=torch`` here: no TensorFlow).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 100
PATCH = 2
NUM_PATCHES = (IMAGE_SHAPE[0] // PATCH) ** 2  # 256 tokens
WIDTH = 64  # embedding_dim
MLP_WIDTH = 64
COEFFICIENT = 4  # dim_coefficient: external attention widens 64 -> 256 channels
HEADS = 4  # num_heads (external attention splits into HEADS * COEFFICIENT = 16 heads)
DROPOUT = 0.2  # attention, projection and MLP dropout alike
DEPTH = 8


def augmentation(adapt_on: np.ndarray) -> keras.Sequential:
    """``data_augmentation``: Normalization adapted on ``adapt_on``, then four random layers that
    only act in training."""
    pipeline = keras.Sequential(
        [
            layers.Normalization(),
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(factor=0.1),
            layers.RandomContrast(factor=0.1),
            layers.RandomZoom(height_factor=0.2, width_factor=0.2),
        ],
        name="data_augmentation",
    )
    pipeline.layers[0].adapt(adapt_on)
    return pipeline


class PatchExtract(layers.Layer):
    """Cut an image into non-overlapping ``patch_size`` squares, each flattened (row, col, channel)."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, images):
        batch, channels = ops.shape(images)[0], ops.shape(images)[-1]
        patches = ops.image.extract_patches(images, self.patch_size)
        return ops.reshape(patches, (batch, -1, self.patch_size**2 * channels))


class PatchEmbedding(layers.Layer):
    """A Dense projection of every patch plus a learned embedding of its position."""

    def __init__(self, num_patch, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patch = num_patch
        self.proj = layers.Dense(embed_dim)
        self.pos_embed = layers.Embedding(input_dim=num_patch, output_dim=embed_dim)

    def call(self, patch):
        positions = ops.arange(start=0, stop=self.num_patch, step=1)
        return self.proj(patch) + self.pos_embed(positions)


def _external_attention(x):
    """Widen to 256 channels, 16 heads of 16; key memory M_k, softmax over the tokens, L1 over the
    memory units, value memory M_v; merge the heads and project back to 64."""
    tokens = x.shape[1]
    heads = HEADS * COEFFICIENT
    head_width = WIDTH * COEFFICIENT // heads
    x = layers.Dense(WIDTH * COEFFICIENT)(x)
    x = ops.transpose(ops.reshape(x, (-1, tokens, heads, head_width)), axes=[0, 2, 1, 3])
    attn = layers.Dense(WIDTH // COEFFICIENT)(x)  # M_k
    attn = layers.Softmax(axis=2)(attn)
    attn = layers.Lambda(
        lambda a: ops.divide(a, ops.convert_to_tensor(1e-9) + ops.sum(a, axis=-1, keepdims=True))
    )(attn)
    attn = layers.Dropout(DROPOUT)(attn)
    x = layers.Dense(head_width)(attn)  # M_v
    x = ops.reshape(ops.transpose(x, axes=[0, 2, 1, 3]), [-1, tokens, WIDTH * COEFFICIENT])
    x = layers.Dense(WIDTH)(x)
    return layers.Dropout(DROPOUT)(x)


def _mlp(x):
    x = layers.Dropout(DROPOUT)(layers.Dense(MLP_WIDTH, activation=ops.gelu)(x))
    return layers.Dropout(DROPOUT)(layers.Dense(WIDTH)(x))


def _block(x, attention_type):
    """Pre-norm block: residual around (LayerNorm, attention), then around (LayerNorm, MLP)."""
    shortcut = x
    x = layers.LayerNormalization(epsilon=1e-5)(x)
    if attention_type == "external_attention":
        x = _external_attention(x)
    else:
        x = layers.MultiHeadAttention(num_heads=HEADS, key_dim=WIDTH, dropout=DROPOUT)(x, x)
    x = layers.add([x, shortcut])
    shortcut = x
    x = _mlp(layers.LayerNormalization(epsilon=1e-5)(x))
    return layers.add([x, shortcut])


def build_model(attention_type: str, adapt_on: np.ndarray) -> keras.Model:
    """The Keras example's model: ``"external_attention"`` (EANet) or ``"self_attention"`` (ViT)."""
    inputs = layers.Input(shape=IMAGE_SHAPE)
    x = augmentation(adapt_on)(inputs)
    x = PatchEmbedding(NUM_PATCHES, WIDTH)(PatchExtract(PATCH)(x))
    for _ in range(DEPTH):
        x = _block(x, attention_type)
    x = layers.GlobalAveragePooling1D()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def perturb(model: keras.Model, rng: np.random.Generator, scale: float = 0.2) -> None:
    """Move biases, LayerNorm gammas/betas and the position embedding off their constant
    initialisation, so that a mix-up of any of them changes the output."""
    for var in model.trainable_weights:
        name = var.path.rsplit("/", 1)[-1]
        noise = rng.normal(0.0, scale, var.shape).astype("float32")
        if name in ("bias", "beta", "embeddings"):
            var.assign(noise)
        elif name == "gamma":
            var.assign(1.0 + noise)
