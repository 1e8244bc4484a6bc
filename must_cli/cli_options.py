"""The `must` command's arguments and options, each declared once as a typed alias.

Typer reads a flag from a parameter's type: an alias here (``Annotated[type, typer.Option(...)]``)
is one flag's names, metavar and help, so a command's signature stays one line per flag and a
flag several commands share is written once. A flag that means a MustConfig field takes its help
and default from MustConfig (config_help), its one owner. `must adapt`'s three dozen flags are the
class AdaptFlags, handed to the command as one record.AdaptOptions (flags_into).
"""

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from must_cli.base.config import MustConfig, preset_names
from must_cli.files.runs import LATEST_RUN, RUNS_DIR


def config_help(field: str, what: str = "") -> str:
    """A flag's help from MustConfig, the one owner of its meaning and default."""
    info = MustConfig.model_fields[field]
    default = info.default
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    text = what or info.description or ""
    first = text.split(" ", 1)[0]
    # "The open_clip ...", not "Open_clip ..."
    text = f"The {text}" if "_" in first else text[:1].upper() + text[1:]
    return f"{text}." + ("" if default in (None, "") else f" [default: {shown}]")


def config_option(field: str, *names: str, metavar: str, what: str = "") -> Any:
    """An adapt option that sets MustConfig's ``field`` (None, the default: not given)."""
    return typer.Option(*names, metavar=metavar, help=config_help(field, what))


def config_switch(field: str, names: str) -> Any:
    """An adapt ``--x/--no-x`` switch for MustConfig's ``field``: on, off or (None) not given."""
    return typer.Option(names, show_default=False, help=config_help(field))


def flags_into(flags: type, options: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declare a command's many flags as a class's annotations; hand them over as one object.

    Typer reads flags from a command's signature; for `must adapt`'s three dozen that signature
    is built here from ``flags`` (name: Annotated flag, in --help order) with the defaults of the
    dataclass ``options``, whose fields carry the same names. The command is called as
    ``command(ctx, options(...))``, so its flags travel named and typed from the first line on.
    """
    hints = typing.get_type_hints(flags, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    if set(hints) != set(defaults):
        differ = sorted(set(hints) ^ set(defaults))
        raise TypeError(f"{flags.__name__} and {options.__name__} name different fields: {differ}")
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=typer.Context)]
    params += [inspect.Parameter(name, keyword, default=defaults[name], annotation=hint)
               for name, hint in hints.items()]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_flags(ctx: typer.Context, **given: Any) -> None:
            command(ctx, options(**given))

        signature = inspect.Signature(params, return_annotation=None)
        with_flags.__signature__ = signature  # type: ignore[attr-defined]
        with_flags.__annotations__ = {p.name: p.annotation for p in params}
        return with_flags

    return decorate


# Shared by several commands.
Device = Annotated[str, typer.Option(
    "--device", metavar="NAME", help="Device: auto, cpu, cuda or cuda:N.")]
Workers = Annotated[int, typer.Option(
    "--workers", metavar="N", help="Data loading processes (-1: the cores, less one).")]
BATCH_HELP = "Images per forward pass."
BatchSize = Annotated[int, typer.Option("--batch-size", metavar="N", help=BATCH_HELP)]
RunFolder = Annotated[Path, typer.Argument(
    metavar="RUN", help="Run folder written by `must adapt`.")]


class AdaptFlags:
    """`must adapt`'s argument and options in --help order, one per record.AdaptOptions field.

    Their defaults are AdaptOptions' (None: not given, so --config, a preset or MustConfig decides).
    """

    images: Annotated[Optional[Path], typer.Argument(
        metavar="IMAGES", show_default=False,
        help="Folder of unlabeled images (searched recursively); not needed with --resume RUN.")]
    classes: Annotated[Optional[Path], typer.Option(
        "--classes", metavar="FILE",
        help="Text file, one class name per line (required unless --resume RUN).")]
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", metavar="FILE",
        help="Prompt templates, one per line with '{}'. [default: CLIP's ImageNet prompts]")]
    model: Annotated[Optional[str], config_option("model", "--model", metavar="SPEC")]
    pretrained: Annotated[Optional[str], config_option("pretrained", "--pretrained", metavar="TAG")]
    preset: Annotated[Optional[str], typer.Option(
        "--preset", metavar="NAME",
        help=f"Hyperparameter preset: {', '.join(preset_names())} (docs/presets.md).")]
    config: Annotated[Optional[Path], typer.Option(
        "--config", metavar="FILE",
        help="TOML file of hyperparameters (see `must init`); flags override it.")]
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="DIR", help=f"Run folder. [default: {RUNS_DIR}/<timestamp>]")]
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start over in an --output that holds a finished or stopped run.")]
    epochs: Annotated[Optional[int], config_option("epochs", "--epochs", metavar="N")]
    batch_size: Annotated[Optional[int], config_option("batch_size", "--batch-size", metavar="N")]
    base_lr: Annotated[Optional[float], config_option("base_lr", "--base-lr", "--lr", metavar="LR")]
    device: Annotated[Optional[str], config_option("device", "--device", metavar="NAME")]
    seed: Annotated[Optional[int], config_option("seed", "--seed", metavar="N")]
    eval_dir: Annotated[Optional[Path], typer.Option(
        "--eval-dir", metavar="DIR",
        help="Labeled folder (one sub-folder per class) to track accuracy each epoch.")]
    workers: Annotated[Optional[int], config_option("workers", "--workers", metavar="N")]
    mim: Annotated[Optional[bool], config_switch("mim", "--mim/--no-mim")]
    align: Annotated[Optional[bool], config_switch("align", "--align/--no-align")]
    fairness: Annotated[Optional[bool], config_switch("fairness", "--fairness/--no-fairness")]
    guard: Annotated[Optional[bool], config_switch("guard", "--guard/--no-guard")]
    accum_steps: Annotated[Optional[int], config_option(
        "accum_steps", "--accum-steps", metavar="N")]
    grad_checkpointing: Annotated[Optional[bool], config_switch(
        "grad_checkpointing", "--grad-checkpointing/--no-grad-checkpointing")]
    compile: Annotated[Optional[bool], config_switch("compile", "--compile/--no-compile")]
    cache: Annotated[Optional[bool], config_switch("cache", "--cache/--no-cache")]
    cache_dir: Annotated[Optional[str], config_option("cache_dir", "--cache-dir", metavar="DIR")]
    precision: Annotated[Optional[str], config_option("precision", "--precision", metavar="NAME")]
    save_every: Annotated[Optional[int], config_option("save_every", "--save-every", metavar="N")]
    max_pixels: Annotated[Optional[int], config_option("max_pixels", "--max-pixels", metavar="N")]
    keep_checkpoints: Annotated[Optional[int], config_option(
        "keep_checkpoints", "--keep-checkpoints", metavar="N",
        what="checkpoints kept when the run finishes (older ones are deleted; while it runs, "
             "the newest 2)")]
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="[RUN]",
        help="Continue a stopped run: --resume RUN alone (a run folder or checkpoint), or "
             f"--output RUN --resume; bare --resume: {LATEST_RUN}. Only --workers, --device and "
             "a larger --epochs may change.")]
    class_prior: Annotated[Optional[str], config_option(
        "class_prior", "--class-prior", metavar="PRIOR")]
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", metavar="RUN",
        help="Warm start from an adapted run (its image tower, [MSK] and decoder); the "
             "classifier is rebuilt from text.")]
    freeze_classifier: Annotated[Optional[bool], config_switch(
        "freeze_classifier", "--freeze-classifier/--train-classifier")]
    predict: Annotated[Optional[bool], typer.Option(
        "--predict", show_default=False,
        help="At the end, write RUN/predictions.csv for these images (as `must predict`).")]
    gpus: Annotated[Optional[int], typer.Option(
        "--gpus", min=1, metavar="N",
        help="Run N data-parallel processes here via torch.distributed.run (with --device cpu: "
             "gloo, for testing).")]
    tensorboard: Annotated[Optional[Path], typer.Option(
        "--tensorboard", metavar="DIR",
        help="Also write each epoch's scalars to this TensorBoard log folder (needs tensorboard).")]


# must eval
EvalImages = Annotated[Path, typer.Argument(
    metavar="IMAGES", show_default=False,
    help="Labeled folder: one sub-folder of images per class, named like the class.")]
EvalModel = Annotated[Optional[str], typer.Option(
    "--model", metavar="SPEC",
    help=f"Run folder or .safetensors (default {LATEST_RUN}); with --zero-shot an open_clip spec.")]
EvalZeroShot = Annotated[bool, typer.Option(
    "--zero-shot", help="Evaluate plain CLIP (--model, --classes) instead of an adapted model.")]
EvalClasses = Annotated[Optional[Path], typer.Option(
    "--classes", metavar="FILE", help="With --zero-shot: text file, one class name per line.")]
EvalPretrained = Annotated[Optional[str], typer.Option(
    "--pretrained", metavar="TAG",
    help="With --zero-shot: open_clip pretrained tag (default openai).")]
EvalTemplates = Annotated[Optional[Path], typer.Option(
    "--templates", metavar="FILE",
    help="With --zero-shot: prompt templates, one per line with '{}'.")]
EvalOutput = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", help="Also write every number to this JSON file.")]
EvalBatchSize = Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help=BATCH_HELP)]

# must init
InitDirectory = Annotated[Path, typer.Argument(
    metavar="DIRECTORY", help="Folder to write must.toml and classes.txt into.")]
InitImages = Annotated[Optional[Path], typer.Option(
    "--images", metavar="DIR", help="Survey this image folder and suggest a preset.")]
InitForce = Annotated[bool, typer.Option(
    "--force", help="Overwrite existing must.toml and classes.txt.")]

# must predict
PredictImages = Annotated[Path, typer.Argument(
    metavar="IMAGES", show_default=False,
    help="Folder of images to classify (searched recursively).")]
PredictModel = Annotated[Optional[str], typer.Option(
    "--model", metavar="SPEC",
    help=f"Run folder or model.safetensors (default {LATEST_RUN}); with --zero-shot an open_clip "
         "spec.")]
PredictOutput = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", help="Write predictions to a .csv or .jsonl file.")]
TopK = Annotated[int, typer.Option(
    "--top-k", metavar="K", help="Labels (with probabilities) per image.")]
SortInto = Annotated[Optional[Path], typer.Option(
    "--sort-into", metavar="DIR", help="Copy each image into DIR/<predicted class>/.")]
Link = Annotated[Optional[str], typer.Option(
    "--link", metavar="MODE", help="Link into --sort-into instead of copying: hard or sym.")]
MinConfidence = Annotated[Optional[float], typer.Option(
    "--min-confidence", metavar="P", help="Top-1 probability below this goes to DIR/_uncertain/.")]
PredictZeroShot = Annotated[bool, typer.Option(
    "--zero-shot", help="Predict with plain CLIP (--model spec, --classes) to compare.")]
PredictClasses = Annotated[Optional[Path], typer.Option(
    "--classes", metavar="FILE", help="With --zero-shot: one class name per line.")]
PredictPretrained = Annotated[Optional[str], typer.Option(
    "--pretrained", metavar="TAG", help="With --zero-shot: open_clip pretrained tag.")]
PredictTemplates = Annotated[Optional[Path], typer.Option(
    "--templates", metavar="FILE", help="With --zero-shot: prompt templates file.")]
PredictMaxPixels = Annotated[Optional[int], typer.Option(
    "--max-pixels", metavar="N",
    help="Skip images with more pixels (a decompression-bomb guard). "
         f"[default: {MustConfig.default('max_pixels'):,}]")]

# must export
ExportModel = Annotated[Optional[str], typer.Option(
    "--model", metavar="SPEC", help=f"Run folder or model.safetensors (default {LATEST_RUN}).")]
ExportFormat = Annotated[str, typer.Option(
    "--format", metavar="FORMAT", help="Format: onnx or torchscript.")]
ExportOutput = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE",
    help="Default: model.onnx / model.torchscript.pt next to the model.")]
Opset = Annotated[int, typer.Option("--opset", metavar="N", help="ONNX opset (18 or higher).")]
Fp16 = Annotated[bool, typer.Option(
    "--fp16",
    help="Half-precision (fp16) weights; inputs and outputs stay float32; checked to 1e-2.")]
ExportVerify = Annotated[bool, typer.Option(
    "--verify/--no-verify", help="Compare with PyTorch on random inputs (batch 1 and 3).")]

# must report
ReportImages = Annotated[Optional[Path], typer.Option(
    "--images", metavar="DIR", help="The adaptation images (default: what the run recorded).")]
ReportEvalDir = Annotated[Optional[Path], typer.Option(
    "--eval-dir", metavar="DIR",
    help="Labeled folder, one sub-folder per class (default: the run's).")]

# must verify
Labels = Annotated[Optional[Path], typer.Option(
    "--labels", metavar="FILE",
    help="Use labels you have: a CSV with an image,class header (paths absolute or relative to the "
         "run's images).")]
ListCount = Annotated[Optional[int], typer.Option(
    "--list", metavar="N",
    help="Write the next N images to label to RUN/to-label.csv (fill in class, pass it to "
         "--labels).")]
VerifyJson = Annotated[Optional[Path], typer.Option(
    "--json", metavar="FILE", help="Also write the summary as JSON (gains in accuracy points).")]
Choose = Annotated[Optional[str], typer.Option(
    "--choose", metavar="MODEL",
    help="Ship zero-shot or adapted from this run (the other is kept); records the verified gain.")]
NoBrowser = Annotated[bool, typer.Option(
    "--no-browser", help="Print the page's URL without opening a browser.")]
Port = Annotated[int, typer.Option(
    "--port", metavar="N", help="Port on 127.0.0.1 (0: a free one).")]
VerifyImages = Annotated[Optional[Path], typer.Option(
    "--images", metavar="DIR", help="The run's images, if they moved.")]
VerifyDevice = Annotated[str, typer.Option(
    "--device", metavar="NAME",
    help="Device: auto, cpu, cuda or cuda:N (only for runs made before adapt saved its labels).")]
