"""The shared start of the module command lines that work over a dataset folder (`baselines.prompts`,
`metrics.tifa_questions`): the folder argument, its check, logging, and the config `run.py` would compose."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

#: Exit status of a command line whose dataset folder does not exist.
NO_FOLDER = 2


def dataset_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser with the dataset folder as its first argument; callers add their own options."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path, help="a dataset in the common layout (DIR/<sample id>/...)")
    return ap


def start(dataset_dir: Path, overrides: list[str]):
    """The composed config (`models=svd`, real weights, unless overridden) once `dataset_dir` exists and logging
    is set up; None, with the reason on stderr, when the folder is missing."""
    if not dataset_dir.is_dir():
        print(f"{dataset_dir}: no such folder", file=sys.stderr)
        return None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import run

    return run.compose("models=svd", *overrides)
