"""The Keras example "Image classification with EANet", step by step, with the eanet package.

For users coming from Keras: each section below is a section of the example, in the same order.
Run it with ``python examples/keras_example.py`` (50 epochs take hours on a laptop CPU: pass
``--epochs 2`` for a quick look; ``--max-steps`` stops even sooner; ``--dataset synthetic`` needs no
download).
"""

import argparse

import eanet
from eanet.cli.progress import ConsoleReport
from eanet.data import load_dataset
from eanet.evaluate import evaluate
from eanet.models.inspect import count_parameters
from eanet.train import resolve_config, train

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--max-steps", type=int)
parser.add_argument("--out", default="runs/keras-example")
parser.add_argument("--dataset", default="cifar100", help="cifar100 as in the example; synthetic for a smoke test")
args = parser.parse_args()

# Prepare the data: CIFAR-100, 50,000 training and 10,000 test images, 100 classes.
# (the example's validation_split=0.2 holds out the last 10,000 training images)
ds = load_dataset(args.dataset, val_fraction=0.2)
print(f"x_train shape: {tuple(ds.train.images.shape)} + validation {tuple(ds.val.images.shape)}")
print(f"x_test shape: {tuple(ds.test.images.shape)}")

# Configure the hyperparameters: they are the `keras-example` recipe (src/eanet/recipes/keras-example.yaml).
config = resolve_config("keras-example", dataset=args.dataset, epochs=args.epochs, max_steps=args.max_steps,
                        out=args.out)
print({k: getattr(config, k) for k in ("lr", "weight_decay", "label_smoothing", "batch_size", "epochs", "augment")})

# The augmentation (Normalization, RandomFlip, RandomRotation, RandomContrast, RandomZoom) is the
# `keras` policy of eanet.augment, run on whole batches; the normalisation lives in the model.
# Patch extraction, patch embedding, external attention, MLP and transformer blocks are
# eanet.layers; get_model(attention_type) is eanet.create_model:
model = eanet.create_model("eanet_keras")
print(f"EANet: {count_parameters(model):,} trainable parameters")

# Train on CIFAR-100: model.compile + model.fit become one call that also writes the run folder
# (metrics.csv, curves.png, TensorBoard, checkpoints, the saved model and its model card).
# The library prints nothing; the command line's reporter shows bars and one line per epoch, as fit() does.
report = ConsoleReport("progress")
result = train(config, report=report, progress=report.bars)
history = result.history

# Visualize the training progress: the run folder's curves.png is the example's plot; drawn again here.
import matplotlib.pyplot as plt  # noqa: E402

plt.plot([r["train_loss"] for r in history], label="train_loss")
plt.plot([r["val_loss"] for r in history], label="val_loss")
plt.xlabel("Epochs")
plt.ylabel("Loss")
plt.title("Train and Validation Losses Over Epochs", fontsize=14)
plt.legend()
plt.grid()
plt.savefig(f"{result.run_dir}/losses.png")

# The final results on the test set.
model = eanet.load_model(result.run_dir)
test = evaluate(model, ds.test.images, ds.test.labels, label_smoothing=config.label_smoothing)
print(f"Test loss: {round(test['loss'], 2)}")
print(f"Test accuracy: {round(test['top1'] * 100, 2)}%")
print(f"Test top 5 accuracy: {round(test['top5'] * 100, 2)}%")

# "You can train ViT under the same experimental conditions": the same recipe with vit_keras.
vit_config = resolve_config("keras-example", model="vit_keras", dataset=args.dataset, epochs=args.epochs,
                            max_steps=args.max_steps, out=f"{args.out}-vit")
vit = train(vit_config, report=report, progress=report.bars)
print(f"ViT test accuracy: {round(vit.test['top1'] * 100, 2)}%, top 5: {round(vit.test['top5'] * 100, 2)}%")
print(f"side by side: eanet compare {result.run_dir} {vit.run_dir}")
