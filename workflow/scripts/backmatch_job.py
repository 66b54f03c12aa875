"""Run one ``backmatch`` subcommand for a Snakemake job.

The command comes from this checkout's ``src/``, the code the cache keys hash,
whatever version of the package the job's environment has installed. Where and
how the job runs (data folder, device, threads) is read from the config here,
not passed as rule parameters, so changing it does not make Snakemake rerun
finished jobs.
"""

import contextlib
import json
import sys
from pathlib import Path

# The snakemake object is injected by Snakemake's script directive.
snakemake = globals()["snakemake"]
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from backmatch.cli import main  # noqa: E402


def arguments(job) -> list[str]:
    """Return the ``backmatch`` command line of ``job``."""
    command = job.params.command
    config = job.config
    if command == "data":
        return ["data", "--dataset", job.wildcards.dataset, "--data-dir", config["data_dir"], "--record", job.output[0]]

    execution = ["--data-dir", config["data_dir"], "--device", config["device"], "--threads", str(job.threads)]
    if command == "train":
        folder = str(Path(job.output.summary).parent)
        return ["train", "--settings-json", job.params.settings, *execution, "--no-progress", "--out", folder]
    if command == "hessian":
        options = json.loads(job.params.options)
        return [
            "hessian", "--checkpoint", f"{job.input.checkpoints}/epoch_{job.wildcards.epoch}.pt", *execution,
            "--samples", str(options["samples"]), "--probes", str(options["probes"]),
            "--dense-max-dim", str(options["dense_max_dim"]), "--lanczos", options["lanczos"],
            "--lanczos-tol", str(options["lanczos_tol"]), "--out", job.output[0],
        ]
    if command == "backmatching":
        options = json.loads(job.params.options)
        return [
            "backmatching", "--data-dir", config["data_dir"], "--threads", str(job.threads),
            "--seed", job.wildcards.seed, "--samples", str(options["samples"]), "--eta", str(options["eta"]),
            "--vgg-width", str(options["vgg_width"]), "--out", job.output[0],
        ]
    raise ValueError(f"unknown backmatch command {command!r}")


with open(snakemake.log[0], "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    status = main(arguments(snakemake))
sys.exit(status)
