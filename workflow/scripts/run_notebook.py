"""Execute one jupytext notebook under papermill for a Snakemake job.

The notebook receives the parameters of its figure or table (the runs it reads
and a description of their scale) plus the paths it must write, and the
executed copy is kept under results/notebooks/ as a record.
"""

import json
import logging
import os
from pathlib import Path

import jupytext
import papermill

# The snakemake object is injected by Snakemake's script directive.
snakemake = globals()["snakemake"]
SOURCE_DIR = Path(snakemake.scriptdir).resolve().parents[1] / "src"

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

# The kernel imports backmatch.reporting from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(part for part in (str(SOURCE_DIR), os.environ.get("PYTHONPATH")) if part)
os.environ.setdefault("MPLBACKEND", "Agg")

notebook = jupytext.read(snakemake.input.notebook)
notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}

parameters = json.loads(snakemake.params.parameters)
parameters["outputs"] = {name: str(path) for name, path in snakemake.output.items() if name != "notebook"}

papermill.execute_notebook(
    notebook,
    snakemake.output.notebook,
    parameters=parameters,
    kernel_name="python3",
    cwd=os.getcwd(),
    progress_bar=False,
    log_output=True,
)
