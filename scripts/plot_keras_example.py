"""Validation curves of `keras-example` runs against the Keras example's published 2021 tf.keras run.

    python scripts/plot_keras_example.py RUN [RUN ...] --out docs/keras-example-curves.png [--table]

Each RUN is a run folder (or any folder with its `metrics.csv`); the label is the folder's name. Prints, with
--table, a markdown table of validation top-1 at the epochs the 2021 run's log reports.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Validation top-1 (%) of the example's 2021 tf.keras run of EANet, at the epochs its log shows.
KERAS_2021_EANET = {1: 11.53, 2: 18.29, 3: 21.41, 4: 23.54, 5: 26.99, 6: 27.49, 7: 28.57, 8: 29.75, 9: 31.75,
                    10: 32.00, 15: 36.04, 20: 36.94, 25: 41.28, 30: 41.18, 40: 42.47, 50: 43.17}


def val_top1(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(row["epoch"]): 100 * float(row["val_top1"]) for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    curves = {run.name: val_top1(run) for run in args.runs}

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), label=name, linewidth=1.6)
    ax.plot(list(KERAS_2021_EANET), list(KERAS_2021_EANET.values()), "ko--", markersize=4, linewidth=1,
            label="the example's 2021 tf.keras run (EANet)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)

    if args.table:
        epochs = list(KERAS_2021_EANET)
        print("| epoch | " + " | ".join(str(e) for e in epochs) + " |")
        print("|---|" + "---:|" * len(epochs))
        for name, curve in curves.items():
            print(f"| {name} | " + " | ".join(f"{curve[e]:.2f}" if e in curve else "" for e in epochs) + " |")
        print("| tf.keras 2021 | " + " | ".join(f"{KERAS_2021_EANET[e]:.2f}" for e in epochs) + " |")


if __name__ == "__main__":
    main()
