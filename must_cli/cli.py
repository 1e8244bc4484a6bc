"""The `must` command: parse, validate, call one function per command, print with rich."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from must_cli.errors import MustError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Adapt a pretrained CLIP to your own unlabeled images with MUST, then predict and export.",
)
err_console = Console(stderr=True)
_debug = {"on": False}


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")) -> None:
    _debug["on"] = debug


def friendly(fn: Callable) -> Callable:
    """Turn MustError (and Ctrl-C) into one red line and exit code 1/130, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MustError as e:
            if _debug["on"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if _debug["on"]:
                raise
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@friendly
def adapt(
    images: Path = typer.Argument(..., help="Folder of unlabeled images (searched recursively)."),
    classes: Path = typer.Option(..., "--classes", help="Text file: one class name per line."),
    templates: Optional[Path] = typer.Option(None, "--templates", help="Prompt templates, one per line with '{}'."),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip name (ViT-B-16), hf-hub:org/repo or local-dir:PATH."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag (default openai)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Hyperparameter preset, e.g. small-dataset (see docs/presets.md)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of hyperparameters (see `must init`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run folder (default runs/<timestamp>)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate per 256 images (scaled by the global batch)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    eval_dir: Optional[Path] = typer.Option(None, "--eval-dir", help="Optional labeled folder (one sub-folder per class) to track accuracy."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loading processes (default: cores, max 8)."),
    mim: Optional[bool] = typer.Option(None, "--mim/--no-mim", help="Masked image modeling objective."),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", help="[CLS]/[MSK] alignment objective."),
    fairness: Optional[bool] = typer.Option(None, "--fairness/--no-fairness", help="Fairness regulariser."),
    guard: Optional[bool] = typer.Option(None, "--guard/--no-guard", help="Keep zero-shot if adaptation collapses."),
    accum_steps: Optional[int] = typer.Option(None, "--accum-steps", help="Gradient accumulation steps."),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile on CUDA."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32 or bf16."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    resume: Optional[str] = typer.Option(
        None, "--resume", is_flag=False, flag_value="auto",
        help="Continue a stopped run: alone, from the newest checkpoint of --output (or runs/latest); or a checkpoint/run path.",
    ),
) -> None:
    """Adapt CLIP to a folder of unlabeled images and write model.safetensors."""
    from must_cli.adapt import AdaptRequest, run_adapt
    from must_cli.config import resolve_config
    from must_cli.progress import Reporter

    overrides = dict(
        model=model, pretrained=pretrained, epochs=epochs, batch_size=batch_size, base_lr=lr, device=device,
        seed=seed, workers=workers, mim=mim, align=align, fairness=fairness, guard=guard, accum_steps=accum_steps,
        grad_checkpointing=grad_checkpointing, compile=compile, precision=precision, save_every=save_every,
    )
    cfg = resolve_config(preset, config, overrides)
    request = AdaptRequest(images=images, classes=classes, templates=templates, output=output,
                           eval_dir=eval_dir, resume=resume)
    run_adapt(request, cfg, Reporter(err_console))


def run() -> None:
    """Entry point for `python -m must_cli`."""
    app(prog_name="must")

