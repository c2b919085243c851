"""``eanet benchmark``: training and inference speed of a model, or ``--scaling`` of the two attentions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from eanet.cli import summary
from eanet.errors import EanetError


def _tokens(value: str) -> list[int]:
    try:
        tokens = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise EanetError(f"--tokens must be comma-separated integers, got {value!r}") from None
    if not tokens or any(n < 1 for n in tokens):
        raise EanetError(f"--tokens must be positive integers, got {value!r}")
    return tokens


def _mb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.1f} MB"


@click.command("benchmark", short_help=summary("benchmark"))
@click.option("--model", "model_name", default=None, help="registered model to time (default eanet_keras)")
@click.option("--recipe", default=None, help="time this training recipe's model (its model and model_args)")
@click.option("--set", "sets", multiple=True, metavar="model_args.KEY=VALUE", help="override one model argument")
@click.option("--batch-size", type=int, default=None,
              help="images per step (default 128), or sequences per step with --scaling (default 4)")
@click.option("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 = torch.autocast with bfloat16 around forward and loss: the fused CPU kernels "
                   "take bf16 operands where the processor has bf16 dot products")
@click.option("--compile/--no-compile", "use_compile", default=False, show_default=True,
              help="torch.compile the training loss and the inference forward")
@click.option("--device", default="auto", show_default=True, help="auto (the GPU when there is one), cpu or cuda[:N]")
@click.option("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 with --scaling)")
@click.option("--steps", type=int, default=5, show_default=True, help="steps per timed run")
@click.option("--repeats", type=int, default=None,
              help="timed runs, the median is reported (default 5; 3 with --scaling)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--peak-size", type=int, default=2048, show_default=True,
              help="matrix size of the matmul that measures the peak FLOP/s")
@click.option("--memory/--no-memory", "measure_memory", default=True, show_default=True,
              help="measure peak memory with one extra untimed step")
@click.option("--scaling", is_flag=True, help="ExternalAttention against SelfAttention (d=64) as N grows")
@click.option("--data", "data_path", is_flag=True, help="the data path instead: batch assembly plus augmentation "
              "(--augment), on CIFAR-100 from --data-dir when present, else synthetic")
@click.option("--augment", default="keras", show_default=True, help="--data: the augmentation policy")
@click.option("--data-dir", default=None, help="--data: where CIFAR-100 is (else $EANET_DATA_DIR)")
@click.option("--tokens", default="256,1024,4096,16384", show_default=True, help="--scaling: token counts N")
@click.option("--dropout", type=float, default=0.0, show_default=True,
              help="--scaling: attention dropout of both modules (>0 makes self-attention use its N x N math path)")
@click.option("--memory-limit", type=float, default=8.0, show_default=True,
              help="--scaling: GB (0 = none); self-attention points whose N x N tensors would exceed it "
                   "are not run and recorded as null")
@click.option("--out", type=click.Path(path_type=Path), default=Path("scaling.png"), show_default=True,
              help="--scaling: where to write the log-log plot")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (a list of rows with --scaling)")
def benchmark_cmd(model_name, recipe, sets, batch_size, threads, dtype, use_compile, device, warmup, steps,
                  repeats, seed, peak_size, measure_memory, scaling, data_path, augment, data_dir, tokens, dropout,
                  memory_limit, out, as_json):
    """Images/second of a model's training step and inference, or (--scaling) the cost of external against
    self-attention as the number of tokens grows.

    The training step is forward + label-smoothed cross-entropy + backward + AdamW step, in train mode with
    the model's dropouts, on random uint8 images. Progress goes to stderr, results to stdout.
    """
    def progress(msg: str) -> None:
        click.echo(msg, err=True)

    if data_path:
        _data_path(data_dir, augment, 128 if batch_size is None else batch_size, 40 if steps == 5 else steps,
                   5 if repeats is None else repeats, device, threads, as_json)
        return
    if scaling:
        _scaling(tokens, 4 if batch_size is None else batch_size, threads, device,
                 1 if warmup is None else warmup, 3 if repeats is None else repeats, seed,
                 measure_memory, dropout, memory_limit, out, as_json, progress)
        return
    from eanet.benchmarks.model_speed import benchmark_model

    model_name, model_args = _model_and_args(model_name, recipe, sets)
    result = benchmark_model(
        model_name, model_args=model_args, batch_size=128 if batch_size is None else batch_size, threads=threads,
        dtype=dtype, compile=use_compile, device=device, warmup=3 if warmup is None else warmup, steps=steps,
        repeats=5 if repeats is None else repeats, seed=seed, peak_size=peak_size, memory=measure_memory,
        progress=progress,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    r = result
    what = r["model"] + (f" ({recipe} recipe)" if recipe else "") + (f" with {', '.join(sets)}" if sets else "")
    kernels = {"fp32": "yes", "bf16": "yes, bf16 products"}.get(r["kernel_precision"], "no")
    click.echo(f"{what} on {r['cpu']} ({r['device']}, {r['threads']} threads), batch {r['batch_size']}, "
               f"{r['dtype']}, {'compiled' if r['compile'] else 'eager'}, fused CPU kernels: {kernels}")
    for phase in ("train", "inference"):
        click.echo(f"  {phase:<9} {r[f'{phase}_images_per_second']:8.1f} img/s   "
                   f"{r[f'{phase}_seconds_per_step'] * 1e3:8.1f} ms/step   "
                   f"{r[f'{phase}_achieved_flops'] / 1e9:6.1f} GFLOP/s = "
                   f"{100 * r[f'{phase}_fraction_of_peak']:4.1f}% of peak   "
                   f"peak memory {_mb(r[f'{phase}_peak_memory_bytes'])}")
    click.echo(f"  runs (img/s): train {', '.join(f'{v:.1f}' for v in r['train_runs_images_per_second'])}; "
               f"inference {', '.join(f'{v:.1f}' for v in r['inference_runs_images_per_second'])}")
    click.echo(f"  model FLOPs/image: train {r['train_flops_per_image'] / 1e6:.1f} M, inference "
               f"{r['inference_flops_per_image'] / 1e6:.1f} M; matmul peak ({r['matmul_peak_dtype']}, "
               f"{r['matmul_peak_size']}^3) {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s")
    click.echo(f"  memory: {r['memory_measure']}; process peak RSS {_mb(r['process_peak_rss_bytes'])}")


def _model_and_args(model_name: str | None, recipe: str | None, sets: tuple[str, ...]) -> tuple[str, dict]:
    """The model to time: ``--model``, else the recipe's, else eanet_keras; its arguments: the recipe's
    ``model_args``, then ``--set model_args.KEY=VALUE``."""
    from eanet.cli.train import _parse_sets

    args: dict = {}
    if recipe:
        from eanet.train.config import load_recipe

        fields = load_recipe(recipe)
        if model_name is None or model_name == fields.get("model"):  # the recipe's model_args are its model's
            model_name = fields.get("model")
            args = dict(fields.get("model_args") or {})
    parsed = _parse_sets(sets)
    unknown = sorted(set(parsed) - {"model_args"})
    if unknown:
        raise EanetError(f"--set of the benchmark takes model_args.KEY=VALUE only, got {', '.join(unknown)}")
    args.update(parsed.get("model_args", {}))
    return model_name or "eanet_keras", args


def _data_path(data_dir, policy, batch_size, steps, repeats, device, threads, as_json):
    import torch

    from eanet.benchmarks.data_path import benchmark_data_path

    if threads:
        torch.set_num_threads(threads)
    result = benchmark_data_path(dataset="auto", data_dir=data_dir, policy=policy, batch_size=batch_size,
                                 steps=steps, repeats=repeats, device=device)
    if as_json:
        click.echo(json.dumps(result))
        return
    runs = ", ".join(f"{r:,.0f}" for r in result["runs"])
    click.echo(f"data path ({result['dataset']}, {result['train_images']:,} train images, policy {result['policy']}, "
               f"batch {result['batch_size']}, {result['device']}, {result['threads']} threads): "
               f"{result['images_per_second']:,.0f} img/s median (runs: {runs}); "
               f"dataset loaded in {result['load_seconds']:.2f} s")


def _scaling(tokens, batch_size, threads, device, warmup, repeats, seed, measure_memory, dropout, memory_limit,
             out, as_json, progress):
    from eanet.benchmarks.scaling import benchmark_scaling, format_table, per_token_spread, plot_scaling
    from eanet.fileio import check_overwrite, is_eanet_png

    check_overwrite(out, is_eanet_png, hint="give --out another file")  # before the measurements, not after
    rows = benchmark_scaling(
        tokens=_tokens(tokens), batch_size=batch_size, threads=threads, device=device, warmup=warmup,
        repeats=repeats, seed=seed, memory=measure_memory, dropout=dropout,
        memory_limit_gb=memory_limit if memory_limit > 0 else None, progress=progress,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        plot_scaling(rows, out)
    except OSError as exc:
        raise EanetError(f"cannot write the plot to {out}: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(format_table(rows))
    for kind in ("external", "self"):
        spread = per_token_spread(rows, kind)
        if spread is not None:
            click.echo(f"{kind}: time per token varies {spread:.2f}x across N")
    click.echo(f"plot: {out}")
