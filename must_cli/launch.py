"""`must adapt --gpus N`: the same command, re-run as N data-parallel processes by torch.distributed.run.

No launcher of our own: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and the rendezvous, and
`must adapt` joins it (NCCL on GPUs; gloo with --device cpu, which is how this is tested).
`python -m must_cli.launch ARGS` is torchrun's own main, except that when a worker fails or
a signal stops the run it exits with a code instead of a traceback: the workers have
already said why in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from must_cli.base.errors import MustError


def without_gpus(args: list[str]) -> list[str]:
    """The command-line arguments minus ``--gpus N`` / ``--gpus=N``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--gpus":
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


def launch_local(n: int, device: str, args: list[str], debug: bool) -> int:
    """Run ``must adapt <args minus --gpus>`` as ``n`` processes on this machine; returns their exit code.

    torchrun runs in its own session and this process relays SIGINT/SIGTERM to it, so a
    Ctrl-C reaches each worker once (via torchrun) and they checkpoint before exiting.
    """
    import torch

    if "WORLD_SIZE" in os.environ:
        raise MustError("--gpus: this command already runs under torchrun: drop --gpus")
    if device != "cpu":
        count = torch.cuda.device_count()
        if count == 0:
            raise MustError(f"--gpus {n}: no CUDA GPU is visible: drop --gpus, or add --device cpu to run "
                            f"{n} CPU processes (gloo) for testing")
        if n > count:
            raise MustError(f"--gpus {n}: only {count} GPU(s) are visible: use --gpus {count} or fewer")
    launcher = "torch.distributed.run" if debug else "must_cli.launch"
    cmd = [sys.executable, "-m", launcher, "--standalone", f"--nproc_per_node={n}",
           "-m", "must_cli", *(["--debug"] if debug else []), "adapt", *without_gpus(args)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))  # torchrun would say 1, loudly
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    relay = {sig: signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in relay.items():
            signal.signal(sig, handler)


def torchrun_quietly(argv: list[str]) -> int:
    """Run torch.distributed.run's main; a failed or stopped run gives an exit code, not a traceback.

    A worker that exits with 1 has printed its one-line error; one killed by a signal (e.g. the
    out-of-memory killer) could not, so that case gets a line here.
    """
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # read by torchrun's loggers at import
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    logging.getLogger("torch.distributed.elastic").setLevel(os.environ["LOGLEVEL"])  # "sending SIGTERM to ..."
    try:
        main(argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:
            print(f"error: process {rank} was killed by {signal.Signals(-failure.exitcode).name} (out of memory?): "
                  "resume with --resume", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(torchrun_quietly(sys.argv[1:]))
