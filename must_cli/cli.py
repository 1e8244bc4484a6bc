"""The `must` command: parse, validate, call one function per command, print with rich.

Each flag is declared once in cli_options; what the commands print is shaped in cli_format.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from must_cli import cli_options as opt
from must_cli.base.config import AUTO_DEVICE, AUTO_WORKERS, INFERENCE_BATCH
from must_cli.base.progress import Reporter, emit, images_bar
from must_cli.cli_format import (
    AdaptCommand, MustCommand, err_console, nothing_to_resume, one_line_errors, session,
    show_adapt_summary, show_eval, show_init, show_predictions, version_lines,
)
from must_cli.files.record import AdaptOptions, inputs_from_flags
from must_cli.files.runs import check_inputs_cheaply, model_path, plan_run

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True,
        help="Print must-cli's and its torch stack's versions, the device and its features."),
) -> None:
    """Adapt a pretrained CLIP to your own unlabeled images with MUST, then predict and export."""
    session.debug = debug


@app.command(cls=AdaptCommand, short_help="Adapt CLIP to unlabeled images; write a model.")
@one_line_errors
@opt.flags_into(opt.AdaptFlags, AdaptOptions)
def adapt(ctx: typer.Context, opts: AdaptOptions) -> None:
    """Adapt CLIP to a folder of unlabeled images with MUST and write RUN/model.safetensors.

    Defaults shown are MustConfig's: a --preset or --config file changes them, and flags
    override both.
    """
    argv = ctx.meta["must_args"]
    inputs, cfg, output = inputs_from_flags(opts, argv)
    # the run folder is checked before torch loads
    plan = plan_run(output, opts.resuming, opts.resume_from, opts.overwrite, epochs=cfg.epochs)
    if nothing_to_resume(plan, cfg.epochs):
        return
    if opts.gpus and opts.gpus > 1:
        from must_cli.launch import launch_local

        raise typer.Exit(launch_local(opts.gpus, cfg.device, argv, session.debug))
    from must_cli.commands.adapt.command import AdaptRequest, run_adapt

    request = AdaptRequest(inputs, output, resume=opts.resuming, resume_from=opts.resume_from,
                           overwrite=opts.overwrite, tensorboard=opts.tensorboard,
                           init_from=opts.init_from, predict=bool(opts.predict))
    result = run_adapt(request, cfg, Reporter(err_console))
    show_adapt_summary(result, inputs.eval_dir is not None)


@app.command("eval", cls=MustCommand, short_help="Measure accuracy on a labeled folder.")
@one_line_errors
def eval_(
    images: opt.EvalImages,
    model: opt.EvalModel = None,
    zero_shot: opt.EvalZeroShot = False,
    classes: opt.EvalClasses = None,
    pretrained: opt.EvalPretrained = None,
    templates: opt.EvalTemplates = None,
    output: opt.EvalOutput = None,
    batch_size: opt.EvalBatchSize = INFERENCE_BATCH,
    workers: opt.Workers = AUTO_WORKERS,
    device: opt.Device = AUTO_DEVICE,
) -> None:
    """Measure accuracy on labeled images: top-1, mean per class, per-class recall, most
    confused pairs."""
    check_inputs_cheaply(images, model, adapted=not zero_shot)
    from must_cli.commands.evaluate import EvalRequest, run_eval

    req = EvalRequest(images, model, zero_shot, classes, pretrained, templates, batch_size, workers,
                      device)
    show_eval(run_eval(req, Reporter(err_console).warn), output)


@app.command("init", cls=MustCommand,
             short_help="Write must.toml and classes.txt; suggest a preset.")
@one_line_errors
def init(
    directory: opt.InitDirectory = Path("."),
    images: opt.InitImages = None,
    force: opt.InitForce = False,
) -> None:
    """Write a commented must.toml and a classes.txt template; with --images, suggest a preset."""
    from must_cli.commands.scaffold import init_project, survey_images

    warn = lambda msg: err_console.print(f"[yellow]warning:[/] {escape(msg)}")  # noqa: E731
    survey = survey_images(images, warn) if images else None
    show_init(survey, init_project(directory, survey, force), images)


@app.command(cls=MustCommand, short_help="Label a folder of images; write CSV/JSONL or sort.")
@one_line_errors
def predict(
    images: opt.PredictImages,
    model: opt.PredictModel = None,
    output: opt.PredictOutput = None,
    top_k: opt.TopK = 1,
    sort_into: opt.SortInto = None,
    link: opt.Link = None,
    min_confidence: opt.MinConfidence = None,
    batch_size: opt.BatchSize = INFERENCE_BATCH,
    workers: opt.Workers = AUTO_WORKERS,
    device: opt.Device = AUTO_DEVICE,
    zero_shot: opt.PredictZeroShot = False,
    classes: opt.PredictClasses = None,
    pretrained: opt.PredictPretrained = None,
    templates: opt.PredictTemplates = None,
    max_pixels: opt.PredictMaxPixels = None,
) -> None:
    """Label a folder of images with an adapted model; optionally write CSV/JSONL or sort into
    class folders."""
    check_inputs_cheaply(images, model, adapted=not zero_shot)
    from must_cli.commands.predict import PredictRequest, run_predict

    req = PredictRequest(images, model, zero_shot, classes, pretrained, templates, batch_size,
                         workers, device, output=output, top_k=top_k, sort_into=sort_into,
                         link=link, min_confidence=min_confidence, max_pixels=max_pixels)
    with images_bar(err_console, "predict") as advance:
        result = run_predict(req, Reporter(err_console).warn, advance)
    show_predictions(result, output)


@app.command(cls=MustCommand, short_help="Export the model as ONNX or TorchScript.")
@one_line_errors
def export(
    model: opt.ExportModel = None,
    format: opt.ExportFormat = ...,  # required: no default
    output: opt.ExportOutput = None,
    opset: opt.Opset = 18,
    fp16: opt.Fp16 = False,
    verify: opt.ExportVerify = True,
) -> None:
    """Export image tower + classifier as one ONNX or TorchScript graph (pixel_values -> logits,
    probabilities)."""
    check_inputs_cheaply(None, model)
    from must_cli.commands.export import run_export

    r = run_export(model_path(model), format, output, opset, fp16, verify)
    check = ("not verified (--no-verify)" if r.max_diff is None else
             f"max |probability difference| vs PyTorch fp32 {r.max_diff:.1e} "
             f"(tolerance {r.tolerance:g})")
    emit(err_console, f"wrote {r.path} ({r.format}{', fp16' if r.fp16 else ''}"
                      f"{f', opset {r.opset}' if r.opset else ''}) in {r.seconds:.1f} s; {check}")


@app.command(cls=MustCommand, short_help="Rebuild a run's report.html.")
@one_line_errors
def report(
    run: opt.RunFolder,
    images: opt.ReportImages = None,
    eval_dir: opt.ReportEvalDir = None,
    device: opt.Device = AUTO_DEVICE,
) -> None:
    """Rebuild RUN/report.html: curves, label changes, example images, the share of changed labels
    and the verified gain."""
    from must_cli.commands.report.build import build_report

    warn = lambda m: err_console.print(f"[yellow]warning:[/] {escape(m)}")  # noqa: E731
    path = build_report(run, images, eval_dir, device, warn=warn)
    Console(highlight=False, soft_wrap=True).print(escape(str(path)))


@app.command(cls=MustCommand, short_help="Check the gain with a few labels (a local page).")
@one_line_errors
def verify(
    run: opt.RunFolder,
    labels: opt.Labels = None,
    list_count: opt.ListCount = None,
    json_out: opt.VerifyJson = None,
    choose: opt.Choose = None,
    no_browser: opt.NoBrowser = False,
    port: opt.Port = 0,
    images: opt.VerifyImages = None,
    device: opt.VerifyDevice = AUTO_DEVICE,
) -> None:
    """Verify whether adaptation helped: label a few images whose label changed, in a local page;
    get the gain and its 90% interval."""
    from must_cli.cli_format import show_verify_summary
    from must_cli.commands.verify.command import VerifyRequest, run_verify

    req = VerifyRequest(run, images, labels, list_count, json_out, choose, not no_browser, port,
                        device)
    say = lambda m: err_console.print(escape(m), highlight=False, soft_wrap=True)  # noqa: E731
    page = lambda url: say(  # noqa: E731
        f"verify page: {url}\n(answers are saved at once; Ctrl-C here ends)")
    show_verify_summary(run_verify(req, page, say), json_out)


def run() -> None:
    """Entry point for `python -m must_cli`."""
    app(prog_name="must")
