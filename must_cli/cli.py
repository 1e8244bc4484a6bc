"""The `must` command: parse, validate, call one function per command, print with rich."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from must_cli.cli_format import (
    AdaptCommand, MustCommand, config_help, err_console, nothing_to_resume, one_line_errors, session, show_adapt_summary,
    version_lines,
)
from must_cli.base.config import AUTO_DEVICE, AUTO_WORKERS, INFERENCE_BATCH, MustConfig, preset_names
from must_cli.base.progress import Reporter, emit, images_bar
from must_cli.files.record import AdaptOptions, inputs_from_flags
from must_cli.files.runs import LATEST_RUN, RUNS_DIR, check_inputs_cheaply, model_path, plan_run

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Adapt a pretrained CLIP to your own unlabeled images with MUST, then predict and export.",
)


def show_version(value: bool) -> None:
    """--version: must-cli, its torch stack, the device a run would use and what it offers there."""
    if value:
        from must_cli.commands.doctor import describe_environment

        for line in version_lines(describe_environment()):
            typer.echo(line)
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                 help="Print must-cli's and its torch stack's versions, the device and its features."),
) -> None:
    """Adapt a pretrained CLIP to your own unlabeled images with MUST, then predict and export."""
    session.debug = debug


@app.command(cls=AdaptCommand, short_help="Adapt CLIP to unlabeled images; write a model.")
@one_line_errors
def adapt(
    ctx: typer.Context,
    images: Optional[Path] = typer.Argument(None, metavar="IMAGES", show_default=False, help="Folder of unlabeled images (searched recursively); not needed with --resume RUN."),
    classes: Optional[Path] = typer.Option(None, "--classes", metavar="FILE", help="Text file, one class name per line (required unless --resume RUN)."),
    templates: Optional[Path] = typer.Option(None, "--templates", metavar="FILE", help="Prompt templates, one per line with '{}'. [default: CLIP's ImageNet prompts]"),
    model: Optional[str] = typer.Option(None, "--model", metavar="SPEC", help=config_help("model")),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", metavar="TAG", help=config_help("pretrained")),
    preset: Optional[str] = typer.Option(None, "--preset", metavar="NAME", help=f"Hyperparameter preset: {', '.join(preset_names())} (docs/presets.md)."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="TOML file of hyperparameters (see `must init`); flags override it."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="DIR", help=f"Run folder. [default: {RUNS_DIR}/<timestamp>]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an --output that holds a finished or stopped run."),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N", help=config_help("epochs")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="N", help=config_help("batch_size")),
    base_lr: Optional[float] = typer.Option(None, "--base-lr", "--lr", metavar="LR", help=config_help("base_lr")),
    device: Optional[str] = typer.Option(None, "--device", metavar="NAME", help=config_help("device")),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help=config_help("seed")),
    eval_dir: Optional[Path] = typer.Option(None, "--eval-dir", metavar="DIR", help="Labeled folder (one sub-folder per class) to track accuracy each epoch."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help=config_help("workers")),
    mim: Optional[bool] = typer.Option(None, "--mim/--no-mim", show_default=False, help=config_help("mim")),
    align: Optional[bool] = typer.Option(None, "--align/--no-align", show_default=False, help=config_help("align")),
    fairness: Optional[bool] = typer.Option(None, "--fairness/--no-fairness", show_default=False, help=config_help("fairness")),
    guard: Optional[bool] = typer.Option(None, "--guard/--no-guard", show_default=False, help=config_help("guard")),
    accum_steps: Optional[int] = typer.Option(None, "--accum-steps", metavar="N", help=config_help("accum_steps")),
    grad_checkpointing: Optional[bool] = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing", show_default=False, help=config_help("grad_checkpointing")),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", show_default=False, help=config_help("compile")),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", show_default=False, help=config_help("cache")),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", metavar="DIR", help=config_help("cache_dir")),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="NAME", help=config_help("precision")),
    save_every: Optional[int] = typer.Option(None, "--save-every", metavar="N", help=config_help("save_every")),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", metavar="N", help=config_help("max_pixels")),
    keep_checkpoints: Optional[int] = typer.Option(None, "--keep-checkpoints", metavar="N", help=config_help("keep_checkpoints", "checkpoints kept when the run finishes (older ones are deleted; while it runs, the newest 2)")),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="[RUN]", help=f"Continue a stopped run: --resume RUN alone (a run folder or checkpoint), or --output RUN --resume; bare --resume: {LATEST_RUN}. Only --workers, --device and a larger --epochs may change."),
    class_prior: Optional[str] = typer.Option(None, "--class-prior", metavar="PRIOR", help=config_help("class_prior")),
    init_from: Optional[Path] = typer.Option(None, "--init-from", metavar="RUN", help="Warm start from an adapted run (its image tower, [MSK] and decoder); the classifier is rebuilt from text."),
    freeze_classifier: Optional[bool] = typer.Option(None, "--freeze-classifier/--train-classifier", show_default=False, help=config_help("freeze_classifier")),
    predict: Optional[bool] = typer.Option(None, "--predict", show_default=False, help="At the end, write RUN/predictions.csv for these images (as `must predict`)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, metavar="N", help="Run N data-parallel processes here via torch.distributed.run (with --device cpu: gloo, for testing)."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", metavar="DIR", help="Also write each epoch's scalars to this TensorBoard log folder (needs tensorboard)."),
) -> None:
    """Adapt CLIP to a folder of unlabeled images with MUST and write RUN/model.safetensors.

    Defaults shown are MustConfig's: a --preset or --config file changes them, and flags
    override both.
    """
    opts = AdaptOptions(
        images=images, classes=classes, templates=templates, preset=preset, config=config, output=output,
        overwrite=overwrite, eval_dir=eval_dir, resume=resume, init_from=init_from, predict=predict, gpus=gpus,
        tensorboard=tensorboard, model=model, pretrained=pretrained, epochs=epochs, batch_size=batch_size,
        base_lr=base_lr, device=device, seed=seed, workers=workers, mim=mim, align=align, fairness=fairness,
        guard=guard, accum_steps=accum_steps, grad_checkpointing=grad_checkpointing, compile=compile, cache=cache,
        cache_dir=cache_dir, precision=precision, save_every=save_every, max_pixels=max_pixels,
        keep_checkpoints=keep_checkpoints, class_prior=class_prior, freeze_classifier=freeze_classifier,
    )
    run_adapt_command(opts, ctx.meta["must_args"])


def run_adapt_command(opts: AdaptOptions, argv: list[str]) -> None:
    """`must adapt` after parsing: check inputs and the run folder without torch, then launch or run."""
    inputs, cfg, output = inputs_from_flags(opts, argv)
    plan = plan_run(output, opts.resuming, opts.resume_from, opts.overwrite, epochs=cfg.epochs)  # before torch loads
    if nothing_to_resume(plan, cfg.epochs):
        return
    if opts.gpus and opts.gpus > 1:
        from must_cli.launch import launch_local

        raise typer.Exit(launch_local(opts.gpus, cfg.device, argv, session.debug))
    from must_cli.commands.adapt import AdaptRequest, run_adapt

    request = AdaptRequest(inputs, output, resume=opts.resuming, resume_from=opts.resume_from,
                           overwrite=opts.overwrite, tensorboard=opts.tensorboard, init_from=opts.init_from,
                           predict=bool(opts.predict))
    result = run_adapt(request, cfg, Reporter(err_console))
    show_adapt_summary(result, inputs.eval_dir is not None)


@app.command("eval", cls=MustCommand, short_help="Measure accuracy on a labeled folder.")
@one_line_errors
def eval_(
    images: Path = typer.Argument(..., metavar="IMAGES", show_default=False, help="Labeled folder: one sub-folder of images per class, named like the class."),
    model: Optional[str] = typer.Option(None, "--model", metavar="SPEC", help=f"Run folder or .safetensors (default {LATEST_RUN}); with --zero-shot an open_clip spec."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Evaluate plain CLIP (--model, --classes) instead of an adapted model."),
    classes: Optional[Path] = typer.Option(None, "--classes", metavar="FILE", help="With --zero-shot: text file, one class name per line."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", metavar="TAG", help="With --zero-shot: open_clip pretrained tag (default openai)."),
    templates: Optional[Path] = typer.Option(None, "--templates", metavar="FILE", help="With --zero-shot: prompt templates, one per line with '{}'."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Also write every number to this JSON file."),
    batch_size: int = typer.Option(INFERENCE_BATCH, "--batch-size", metavar="N", min=1, help="Images per forward pass."),
    workers: int = typer.Option(AUTO_WORKERS, "--workers", metavar="N", help="Data loading processes (-1: the cores, less one)."),
    device: str = typer.Option(AUTO_DEVICE, "--device", metavar="NAME", help="Device: auto, cpu, cuda or cuda:N."),
) -> None:
    """Measure accuracy on labeled images: top-1, mean per class, per-class recall, most confused pairs."""
    import json
    check_inputs_cheaply(images, model, adapted=not zero_shot)
    from must_cli.files.atomic import atomic_write_text
    from must_cli.commands.evaluate import EvalRequest, run_eval

    req = EvalRequest(images, model, zero_shot, classes, pretrained, templates, batch_size, workers, device)
    res = run_eval(req, Reporter(err_console).warn)
    out = Reporter(Console())
    out.table(f"must eval: {res['model']} on {res['images']} images", ["top-1", "mean per class"],
              [[f"{res['top1']:.2%}", f"{res['mean_per_class']:.2%}"]])
    out.table("per-class recall", ["class", "recall"], [[c, f"{r:.2%}"] for c, r in res["per_class_recall"].items()])
    if res["confusions"]:
        out.table("most confused", ["true", "predicted as", "images"],
                  [[p["true"], p["predicted"], p["count"]] for p in res["confusions"]])
    if output is not None:
        atomic_write_text(output, json.dumps(res, indent=2) + "\n")
        err_console.print(f"results written to {escape(str(output))}", highlight=False)


@app.command("init", cls=MustCommand, short_help="Write must.toml and classes.txt; suggest a preset.")
@one_line_errors
def init(
    directory: Path = typer.Argument(Path("."), metavar="DIRECTORY", help="Folder to write must.toml and classes.txt into."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="Survey this image folder and suggest a preset."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing must.toml and classes.txt."),
) -> None:
    """Write a commented must.toml and a classes.txt template; with --images, suggest a preset."""
    from rich.table import Table

    from must_cli.files.images import display_name
    from must_cli.commands.scaffold import init_project, survey_images

    out = Console(highlight=False)
    survey = survey_images(images, lambda msg: err_console.print(f"[yellow]warning:[/] {escape(msg)}")) if images else None
    written = init_project(directory, survey, force)
    if survey:
        table = Table(title=f"images in {escape(display_name(survey.root))}", show_header=False)
        table.add_row("readable", f"{survey.readable:,}")
        table.add_row("skipped", f"{survey.skipped:,}")
        table.add_row("formats", ", ".join(f"{ext} {n:,}" for ext, n in survey.formats.items()))
        for label, (width, height) in (("smallest", survey.smallest), ("median", survey.median), ("largest", survey.largest)):
            table.add_row(label, f"{width} x {height}")
        out.print(table)
        emit(out, f"suggested preset: {survey.preset} ({survey.reason}), written into must.toml")
    for path in written:
        emit(out, f"wrote {display_name(path)}")
    emit(out, f"next: edit {display_name(written[1])}, then run `must adapt {display_name(images or 'IMAGES')} "
              f"--classes {display_name(written[1])} --config {display_name(written[0])}`")


@app.command(cls=MustCommand, short_help="Label a folder of images; write CSV/JSONL or sort.")
@one_line_errors
def predict(
    images: Path = typer.Argument(..., metavar="IMAGES", show_default=False, help="Folder of images to classify (searched recursively)."),
    model: Optional[str] = typer.Option(None, "--model", metavar="SPEC", help=f"Run folder or model.safetensors (default {LATEST_RUN}); with --zero-shot an open_clip spec."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write predictions to a .csv or .jsonl file."),
    top_k: int = typer.Option(1, "--top-k", metavar="K", help="Labels (with probabilities) per image."),
    sort_into: Optional[Path] = typer.Option(None, "--sort-into", metavar="DIR", help="Copy each image into DIR/<predicted class>/."),
    link: Optional[str] = typer.Option(None, "--link", metavar="MODE", help="Link into --sort-into instead of copying: hard or sym."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", metavar="P", help="Top-1 probability below this goes to DIR/_uncertain/."),
    batch_size: int = typer.Option(INFERENCE_BATCH, "--batch-size", metavar="N", help="Images per forward pass."),
    workers: int = typer.Option(AUTO_WORKERS, "--workers", metavar="N", help="Data loading processes (-1: the cores, less one)."),
    device: str = typer.Option(AUTO_DEVICE, "--device", metavar="NAME", help="Device: auto, cpu, cuda or cuda:N."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Predict with plain CLIP (--model spec, --classes) to compare."),
    classes: Optional[Path] = typer.Option(None, "--classes", metavar="FILE", help="With --zero-shot: one class name per line."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", metavar="TAG", help="With --zero-shot: open_clip pretrained tag."),
    templates: Optional[Path] = typer.Option(None, "--templates", metavar="FILE", help="With --zero-shot: prompt templates file."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", metavar="N", help=f"Skip images with more pixels (a decompression-bomb guard). [default: {MustConfig.default('max_pixels'):,}]"),
) -> None:
    """Label a folder of images with an adapted model; optionally write CSV/JSONL or sort into class folders."""
    from rich.table import Table

    check_inputs_cheaply(images, model, adapted=not zero_shot)
    from must_cli.files.images import display_name
    from must_cli.commands.predict import PredictRequest, run_predict

    req = PredictRequest(images, model, zero_shot, classes, pretrained, templates, batch_size, workers, device,
                         output=output, top_k=top_k, sort_into=sort_into, link=link, min_confidence=min_confidence,
                         max_pixels=max_pixels)
    with images_bar(err_console, "predict") as advance:
        result = run_predict(req, Reporter(err_console).warn, advance)
    if len(result.predictions) <= 50:
        table = Table(*["image", *(f"#{i}" if result.top_k > 1 else "class" for i in range(1, result.top_k + 1))])
        for p in result.predictions:
            table.add_row(escape(p.path), *(f"{escape(c)} {q:.3f}" for c, q in zip(p.labels, p.probabilities)))
        Console().print(table)
    elif output is None:
        err_console.print(f"{len(result.predictions):,} rows: not printed; pass --output FILE.csv or FILE.jsonl to keep them")
    say = lambda msg: emit(err_console, msg)  # noqa: E731
    for name, folder in result.renamed.items():
        say(f"class {name!r} -> folder {folder!r}")
    for note in result.notes:
        say(f"note: {note}")
    say(f"{len(result.predictions):,} images in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s) on "
        f"{result.device}" + (f"; {result.skipped + result.failed} unreadable skipped" if result.skipped + result.failed else ""))
    if result.output:
        say(f"predictions written to {display_name(result.output)}")
    if result.sort_into:
        say(f"sorted into {display_name(result.sort_into)}: " + ", ".join(f"{f} {n}" for f, n in sorted(result.sorted_counts.items()))
            + (f"; {result.already_sorted:,} already there (identical copies), skipped" if result.already_sorted else ""))


@app.command(cls=MustCommand, short_help="Export the model as ONNX or TorchScript.")
@one_line_errors
def export(
    model: Optional[str] = typer.Option(None, "--model", metavar="SPEC", help=f"Run folder or model.safetensors (default {LATEST_RUN})."),
    format: str = typer.Option(..., "--format", metavar="FORMAT", help="Format: onnx or torchscript."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Default: model.onnx / model.torchscript.pt next to the model."),
    opset: int = typer.Option(18, "--opset", metavar="N", help="ONNX opset (18 or higher)."),
    fp16: bool = typer.Option(False, "--fp16", help="Half-precision (fp16) weights; inputs and outputs stay float32; checked to 1e-2."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare with PyTorch on random inputs (batch 1 and 3)."),
) -> None:
    """Export image tower + classifier as one ONNX or TorchScript graph (pixel_values -> logits, probabilities)."""
    check_inputs_cheaply(None, model)
    from must_cli.commands.export import run_export
    r = run_export(model_path(model), format, output, opset, fp16, verify)
    check = (f"max |probability difference| vs PyTorch fp32 {r.max_diff:.1e} (tolerance {r.tolerance:g})"
             if r.max_diff is not None else "not verified (--no-verify)")
    emit(err_console, f"wrote {r.path} ({r.format}{', fp16' if r.fp16 else ''}"
                      f"{f', opset {r.opset}' if r.opset else ''}) in {r.seconds:.1f} s; {check}")


@app.command(cls=MustCommand, short_help="Rebuild a run's report.html.")
@one_line_errors
def report(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder written by `must adapt`."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="The adaptation images (default: what the run recorded)."),
    eval_dir: Optional[Path] = typer.Option(None, "--eval-dir", metavar="DIR", help="Labeled folder, one sub-folder per class (default: the run's)."),
    device: str = typer.Option(AUTO_DEVICE, "--device", metavar="NAME", help="Device: auto, cpu, cuda or cuda:N."),
) -> None:
    """Rebuild RUN/report.html: curves, label changes, example images, the share of changed labels and the verified gain."""
    from must_cli.commands.report import build_report

    path = build_report(run, images, eval_dir, device, warn=lambda m: err_console.print(f"[yellow]warning:[/] {escape(m)}"))
    Console(highlight=False, soft_wrap=True).print(escape(str(path)))


@app.command(cls=MustCommand, short_help="Check the gain with a few labels (a local page).")
@one_line_errors
def verify(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder written by `must adapt`."),
    labels: Optional[Path] = typer.Option(None, "--labels", metavar="FILE", help="Use labels you have: a CSV with an image,class header (paths absolute or relative to the run's images)."),
    list_count: Optional[int] = typer.Option(None, "--list", metavar="N", help="Write the next N images to label to RUN/to-label.csv (fill in class, pass it to --labels)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the summary as JSON (gains in accuracy points)."),
    choose: Optional[str] = typer.Option(None, "--choose", metavar="MODEL", help="Ship zero-shot or adapted from this run (the other is kept); records the verified gain."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the page's URL without opening a browser."),
    port: int = typer.Option(0, "--port", metavar="N", help="Port on 127.0.0.1 (0: a free one)."),
    images: Optional[Path] = typer.Option(None, "--images", metavar="DIR", help="The run's images, if they moved."),
    device: str = typer.Option(AUTO_DEVICE, "--device", metavar="NAME", help="Device: auto, cpu, cuda or cuda:N (only for runs made before adapt saved its labels)."),
) -> None:
    """Verify whether adaptation helped: label a few images whose label changed, in a local page; get the gain and its 90% interval."""
    from must_cli.cli_format import show_verify_summary
    from must_cli.commands.verify import VerifyRequest, run_verify

    req = VerifyRequest(run, images, labels, list_count, json_out, choose, not no_browser, port, device)
    say = lambda m: err_console.print(escape(m), highlight=False, soft_wrap=True)  # noqa: E731
    show_verify_summary(run_verify(req, lambda url: say(f"verify page: {url}\n(answers are saved at once; Ctrl-C here ends)"), say), json_out)


def run() -> None:
    """Entry point for `python -m must_cli`."""
    app(prog_name="must")

