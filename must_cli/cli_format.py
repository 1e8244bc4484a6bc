"""Formatting and parsing helpers of the `must` command: one-line errors, usage lines, flag help, summaries.

cli.py keeps one function per command; what they share to parse and print lives here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from must_cli.base.config import MustConfig
from must_cli.commands.doctor import Environment, fix_command, installed, stack_problem
from must_cli.base.errors import MustError, RunStopped
from must_cli.base.progress import Reporter, emit
from must_cli.files.runs import MODEL_FILE, RunPlan

err_console = Console(stderr=True)
RESUME_OWN_RUN = ""  # the value of a bare --resume: continue the run in --output (or the newest run)


@dataclass
class Session:
    """Options given before the command, for every command of this process."""

    debug: bool = False  # keep tracebacks instead of one-line errors


session = Session()


def one_line_errors(fn: Callable) -> Callable:
    """Turn MustError into one red line (exit 1), a requested stop into `stopped ...` (exit 128 + signal),
    Ctrl-C into `interrupted` (130) and a torch stack that fails to import into one line; unless --debug."""

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
    """Spell a bare ``--resume`` (last, or followed by another option) as ``--resume=`` (RESUME_OWN_RUN).

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
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


class AdaptCommand(MustCommand):
    """Lets ``--resume`` stand alone or take a path, and keeps the raw arguments for ``--gpus``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["must_args"] = list(args)
        return super().parse_args(ctx, optional_resume(args))


def config_help(field: str, what: str = "") -> str:
    """A flag's help from MustConfig, the one owner of its meaning and default."""
    info = MustConfig.model_fields[field]
    default = info.default
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    text = what or info.description or ""
    first = text.split(" ", 1)[0]
    text = f"The {text}" if "_" in first else text[:1].upper() + text[1:]  # "The open_clip ...", not "Open_clip"
    return f"{text}." + ("" if default in (None, "") else f" [default: {shown}]")


def show_adapt_summary(result: Any, with_eval: bool) -> None:
    """The per-epoch table (accuracy columns only with --eval-dir) and where the model went, on stdout."""
    columns = ["epoch", "loss", "kept", "balance", "agree"]
    evals = ("zero_shot", "teacher", "student") if with_eval else ()
    rows = []
    for r in result.metrics:
        ev = r.get("eval", {})
        rows.append([r["epoch"], *(r.get(c, "") for c in columns[1:]),
                     *(f"{ev[k]['top1']:.4f}" if k in ev else "" for k in evals)])
    if result.skipped:
        Reporter(err_console).warn(f"{result.skipped} unreadable file(s) were skipped (listed above)")
    out = Reporter(Console())
    out.table("must adapt", columns + [f"{k.replace('_', '-')} top-1" for k in evals], rows)
    out.info(f"model written to {result.model_file}" + (" (zero-shot kept by the guard)" if result.guard_note
             else " (EMA teacher)") + (f"; predictions written to {result.predictions}" if result.predictions else ""))
    if result.class_prior and result.class_prior["source"] != "uniform":
        from must_cli.method.priors import describe  # torch is loaded by now: adapt ran
        out.info(f"class prior {describe(result.class_prior)}")
    show_next_steps(out, result)


def show_next_steps(out: Reporter, result: Any) -> None:
    """adapt's last lines: where the report is, and how to know whether adaptation helped (labels, not a guess)."""
    from must_cli.commands.verify_stats import labels_for_margin

    out.info(f"report: {result.run_dir / 'report.html'}")
    if result.changed is None:
        return
    changed, predicted = result.changed
    share = changed / predicted if predicted else 0.0
    if not changed:
        out.info("no label changed on the run's images: adaptation cannot have changed accuracy on them")
        return
    out.info(f"adaptation changed {changed:,} of {predicted:,} labels ({100 * share:.1f}%); whether it helped is not "
             f"known without labels: run `must verify {result.run_dir}` and answer about "
             f"{labels_for_margin(share, changed)} of them for the gain to +-2 points")


def show_verify_summary(result: Any, json_out: Any = None) -> None:
    """`must verify`'s summary on stdout: the same lines the page shows, then what was done or can be done."""
    out = Console(highlight=False, soft_wrap=True)
    for line in [*result.lines, *(f"note: {n}" for n in result.notes)]:
        out.print(escape(line))
    if result.listed:
        out.print(escape(f"wrote {result.listed}: fill in the class column, then `must verify {result.run} "
                         f"--labels {result.listed}`"))
    if result.chosen:
        out.print(escape(result.chosen))
    if result.suggestion:
        why = ("the adapted model is verified to be worse" if result.estimate.verdict == "hurt" else
               "the whole 90% interval is below 0 (label more to be sure, or act now)")
        out.print(escape(f"{why}: ship zero-shot instead with `{result.suggestion}` (the adapted model is kept "
                         "beside it)"))
    if json_out:
        out.print(escape(f"summary written to {json_out}"))


def nothing_to_resume(plan: RunPlan, epochs: int) -> bool:
    """`--resume` of a finished run: say it changes nothing (True), or that --epochs continues it, up front."""
    if plan.finished is None:
        return False
    if plan.checkpoint is None:
        emit(err_console, f"{plan.folder} is finished: {plan.finished} of {plan.finished} epochs, {MODEL_FILE} "
                          f"written; nothing to do (to train longer, add --epochs N with N above {plan.finished})")
        return True
    emit(err_console, f"{plan.folder} finished {plan.finished} epochs; continuing to {epochs} as --epochs asks (the "
                      f"learning-rate schedule now spans {epochs} epochs; {MODEL_FILE} is replaced at the end)")
    return False


def version_lines(env: Environment) -> list[str]:
    """`must --version`: what a bug report needs, each line short enough for 80 columns."""
    lines = [f"must-cli {env.versions.pop('must-cli')}", ", ".join(f"{k} {v}" for k, v in env.versions.items())]
    if env.mismatch:
        lines.append(f"torch/torchvision mismatch: {env.mismatch}: fix with `{fix_command(installed('torch'))}`")
    if env.problem:
        return [*lines, env.problem, f"weights cache: {env.weights_cache}"]
    gpus = ", ".join(env.gpus) if env.gpus else "none seen"
    return [*lines, f"CUDA {env.cuda}; GPU: {gpus}; device: {env.device}",
            *(f"{name}: {value}" for name, value in env.features.items()), f"weights cache: {env.weights_cache}"]
