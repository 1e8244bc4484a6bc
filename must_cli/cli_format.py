"""Formatting and parsing helpers of the `must` command: one-line errors, usage lines, summaries.

cli.py keeps one function per command; what they share to parse and print lives here (the flags
themselves are declared in cli_options).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from must_cli.commands.doctor import Environment, fix_command, installed, stack_problem
from must_cli.base.errors import MustError, RunStopped
from must_cli.base.progress import Reporter, emit
from must_cli.files.run_dir import MODEL_FILE, RunDir
from must_cli.files.runs import RunPlan

err_console = Console(stderr=True)
# the value of a bare --resume: continue the run in --output (or the newest run)
RESUME_OWN_RUN = ""


@dataclass
class Session:
    """Options given before the command, for every command of this process."""

    debug: bool = False  # keep tracebacks instead of one-line errors


session = Session()


def one_line_errors(fn: Callable) -> Callable:
    """Turn MustError into one red line (exit 1), a requested stop into `stopped ...` (exit 128 +
    signal), Ctrl-C into `interrupted` (130) and a torch stack that fails to import into one line;
    unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RunStopped as e:
            if session.debug:
                raise
            emit(err_console, str(e))
            raise typer.Exit(128 + e.signum) from None
        except MustError as e:
            if session.debug:
                raise
            emit(err_console, str(e), "error:", "bold red")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if session.debug:
                raise
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.ClickException):
            raise  # click's own control flow (RuntimeError subclasses), not a failure
        except Exception:
            problem = None if session.debug else stack_problem()
            if problem is None:
                raise  # a bug: its traceback is what a report needs
            emit(err_console, problem, "error:", "bold red")
            raise typer.Exit(1) from None

    return wrapper


def optional_resume(args: list[str]) -> list[str]:
    """Spell a bare ``--resume`` (last, or followed by another option) as ``--resume=``, that is
    as RESUME_OWN_RUN.

    Typer has no option with an optional value; this gives ``--resume`` and ``--resume PATH``
    both meanings. A path that starts with '-' needs ``--resume=PATH``.
    """
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out[i] = f"--resume={RESUME_OWN_RUN}"
    return out


class MustCommand(TyperCommand):
    """Usage lines as the docs write them: ``must eval [OPTIONS] IMAGES``, not ``{IMAGES}``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]


class AdaptCommand(MustCommand):
    """Lets ``--resume`` stand alone or take a path, and keeps the raw arguments for ``--gpus``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["must_args"] = list(args)
        return super().parse_args(ctx, optional_resume(args))


def show_adapt_summary(result: Any, with_eval: bool) -> None:
    """The per-epoch table (accuracy columns only with --eval-dir) and where the model went, on
    stdout."""
    columns = ["epoch", "loss", "kept", "balance", "agree"]
    evals = ("zero_shot", "teacher", "student") if with_eval else ()
    rows = []
    for r in result.metrics:
        ev = r.get("eval", {})
        rows.append([r["epoch"], *(r.get(c, "") for c in columns[1:]),
                     *(f"{ev[k]['top1']:.4f}" if k in ev else "" for k in evals)])
    if result.skipped:
        Reporter(err_console).warn(
            f"{result.skipped} unreadable file(s) were skipped (listed above)")
    out = Reporter(Console())
    out.table("must adapt", columns + [f"{k.replace('_', '-')} top-1" for k in evals], rows)
    kept = " (zero-shot kept by the guard)" if result.guard_note else " (EMA teacher)"
    predictions = f"; predictions written to {result.predictions}" if result.predictions else ""
    out.info(f"model written to {result.model_file}{kept}{predictions}")
    if result.class_prior and result.class_prior["source"] != "uniform":
        from must_cli.method.priors import describe  # torch is loaded by now: adapt ran
        out.info(f"class prior {describe(result.class_prior)}")
    show_next_steps(out, result)


def show_next_steps(out: Reporter, result: Any) -> None:
    """adapt's last lines: where the report is, and how to know whether adaptation helped
    (labels, not a guess)."""
    from must_cli.commands.verify.stats import labels_for_margin

    out.info(f"report: {RunDir(result.run_dir).report_file}")
    if result.changed is None:
        return
    changed, predicted = result.changed
    share = changed / predicted if predicted else 0.0
    if not changed:
        out.info("no label changed on the run's images: adaptation cannot have changed accuracy "
                 "on them")
        return
    out.info(f"adaptation changed {changed:,} of {predicted:,} labels ({100 * share:.1f}%); "
             f"whether it helped is not known without labels: run `must verify {result.run_dir}` "
             "and answer about "
             f"{labels_for_margin(share, changed)} of them for the gain to +-2 points")


def show_eval(res: dict[str, Any], output: Path | None) -> None:
    """`must eval`'s tables on stdout; with --output, every number as JSON too."""
    out = Reporter(Console())
    out.table(f"must eval: {res['model']} on {res['images']} images", ["top-1", "mean per class"],
              [[f"{res['top1']:.2%}", f"{res['mean_per_class']:.2%}"]])
    out.table("per-class recall", ["class", "recall"],
              [[c, f"{r:.2%}"] for c, r in res["per_class_recall"].items()])
    if res["confusions"]:
        out.table("most confused", ["true", "predicted as", "images"],
                  [[p["true"], p["predicted"], p["count"]] for p in res["confusions"]])
    if output is not None:
        from must_cli.files.atomic import atomic_write_text

        atomic_write_text(output, json.dumps(res, indent=2) + "\n")
        err_console.print(f"results written to {escape(str(output))}", highlight=False)


def show_init(survey: Any, written: list[Path], images: Path | None) -> None:
    """`must init`: the image survey (with --images), the files written, and the next command."""
    from rich.table import Table

    from must_cli.files.images import display_name

    out = Console(highlight=False)
    if survey:
        table = Table(title=f"images in {escape(display_name(survey.root))}", show_header=False)
        table.add_row("readable", f"{survey.readable:,}")
        table.add_row("skipped", f"{survey.skipped:,}")
        table.add_row("formats", ", ".join(f"{ext} {n:,}" for ext, n in survey.formats.items()))
        sizes = (("smallest", survey.smallest), ("median", survey.median),
                 ("largest", survey.largest))
        for label, (width, height) in sizes:
            table.add_row(label, f"{width} x {height}")
        out.print(table)
        emit(out, f"suggested preset: {survey.preset} ({survey.reason}), written into must.toml")
    for path in written:
        emit(out, f"wrote {display_name(path)}")
    emit(out, f"next: edit {display_name(written[1])}, then run `must adapt "
              f"{display_name(images or 'IMAGES')} --classes {display_name(written[1])} "
              f"--config {display_name(written[0])}`")


def show_predictions(result: Any, output: Path | None) -> None:
    """`must predict`: up to 50 rows as a table on stdout, then what was written, sorted and
    skipped."""
    from rich.table import Table

    from must_cli.files.images import display_name

    if len(result.predictions) <= 50:
        top = range(1, result.top_k + 1)
        table = Table(*["image", *(f"#{i}" if result.top_k > 1 else "class" for i in top)])
        for p in result.predictions:
            table.add_row(escape(p.path),
                          *(f"{escape(c)} {q:.3f}" for c, q in zip(p.labels, p.probabilities)))
        Console().print(table)
    elif output is None:
        err_console.print(f"{len(result.predictions):,} rows: not printed; pass --output FILE.csv "
                          "or FILE.jsonl to keep them")
    say = lambda msg: emit(err_console, msg)  # noqa: E731
    for name, folder in result.renamed.items():
        say(f"class {name!r} -> folder {folder!r}")
    for note in result.notes:
        say(f"note: {note}")
    unreadable = result.skipped + result.failed
    skipped = f"; {unreadable} unreadable skipped" if unreadable else ""
    say(f"{len(result.predictions):,} images in {result.seconds:.1f} s "
        f"({result.images_per_second:.1f} images/s) on {result.device}{skipped}")
    if result.output:
        say(f"predictions written to {display_name(result.output)}")
    if result.sort_into:
        counts = ", ".join(f"{f} {n}" for f, n in sorted(result.sorted_counts.items()))
        already = (f"; {result.already_sorted:,} already there (identical copies), skipped"
                   if result.already_sorted else "")
        say(f"sorted into {display_name(result.sort_into)}: {counts}{already}")


def show_verify_summary(result: Any, json_out: Any = None) -> None:
    """`must verify`'s summary on stdout: the same lines the page shows, then what was done or can
    be done."""
    out = Console(highlight=False, soft_wrap=True)
    for line in [*result.lines, *(f"note: {n}" for n in result.notes)]:
        out.print(escape(line))
    if result.listed:
        out.print(escape(f"wrote {result.listed}: fill in the class column, then `must verify "
                         f"{result.run} --labels {result.listed}`"))
    if result.chosen:
        out.print(escape(result.chosen))
    if result.suggestion:
        why = ("the adapted model is verified to be worse" if result.estimate.verdict == "hurt" else
               "the whole 90% interval is below 0 (label more to be sure, or act now)")
        out.print(escape(f"{why}: ship zero-shot instead with `{result.suggestion}` (the adapted "
                         "model is kept beside it)"))
    if json_out:
        out.print(escape(f"summary written to {json_out}"))


def nothing_to_resume(plan: RunPlan, epochs: int) -> bool:
    """`--resume` of a finished run: say it changes nothing (True), or that --epochs continues it,
    up front."""
    if plan.finished is None:
        return False
    if plan.checkpoint is None:
        emit(err_console, f"{plan.folder} is finished: {plan.finished} of {plan.finished} epochs, "
                          f"{MODEL_FILE} written; nothing to do (to train longer, add --epochs N "
                          f"with N above {plan.finished})")
        return True
    emit(err_console, f"{plan.folder} finished {plan.finished} epochs; continuing to {epochs} as "
                      f"--epochs asks (the learning-rate schedule now spans {epochs} epochs; "
                      f"{MODEL_FILE} is replaced at the end)")
    return False


def version_lines(env: Environment) -> list[str]:
    """`must --version`: what a bug report needs, each line short enough for 80 columns."""
    lines = [f"must-cli {env.versions.pop('must-cli')}",
             ", ".join(f"{k} {v}" for k, v in env.versions.items())]
    if env.mismatch:
        fix = fix_command(installed("torch"))
        lines.append(f"torch/torchvision mismatch: {env.mismatch}: fix with `{fix}`")
    if env.problem:
        return [*lines, env.problem, f"weights cache: {env.weights_cache}"]
    gpus = ", ".join(env.gpus) if env.gpus else "none seen"
    return [*lines, f"CUDA {env.cuda}; GPU: {gpus}; device: {env.device}",
            *(f"{name}: {value}" for name, value in env.features.items()),
            f"weights cache: {env.weights_cache}"]
