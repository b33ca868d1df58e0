"""The harness's single entry point.

    python run.py method=videoshop dataset=sample          edit + score one method on one dataset
    python run.py -m method=identity,static,oracle         a sweep, in one process (models loaded once)
    python run.py -m experiment=table5                     a preset sweep
    python run.py stage=score method=...                   re-score saved edits with the current metrics
    python run.py stage=summarize                          every run's summary over all its rows (the reduce)
    python run.py stage=report                             tables from everything under results_dir
    python run.py stage=build dataset=magicbrush           prepare a dataset into data_dir
    python run.py stage=study 'study.against=[bdia,rave]'  a blinded human preference study of finished runs
    python run.py stage=serve                              its web app for raters (docs/study.md)
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)

log = logging.getLogger("run")


def compose(*overrides: str) -> DictConfig:
    """The config `python run.py` would run with these overrides, for the module command lines (benchmarks,
    linearity, prompts, TIFA questions) that take `key=value` arguments too."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def main(cfg: DictConfig, overrides: list[str] = ()) -> dict | None:
    """Run one job of the config; also callable from tests with a composed config."""
    from harness.cache import instantiate_cached
    from harness.runner import resolve_device, run

    cfg.device = resolve_device(cfg.device)
    from harness.cache import work
    from harness.cpu import set_threads

    set_threads(cfg.get("threads"))
    work.resize(float(cfg.get("share_work_mb") or 0))
    if cfg.stage in ("edit", "score"):
        return run(cfg, overrides)
    if cfg.stage == "summarize":
        from harness.runner import summarize_runs

        return summarize_runs(cfg.results_dir, cfg.device)
    if cfg.stage == "report":
        from reports.human import write_human_report
        from reports.tables import write_report

        table = write_report(cfg.results_dir, cfg.get("report"))
        write_human_report(cfg.results_dir)
        return table
    if cfg.stage in ("study", "serve"):
        from study.build import build_study, study_dir
        from study.crowd import export_bundle
        from study.server import serve
        from study.settings import Settings

        settings = Settings.from_config(cfg.study)
        if cfg.stage == "study":
            return export_bundle(build_study(cfg.results_dir, settings))
        return serve(study_dir(cfg.results_dir, settings.name), settings.host, settings.port)
    if cfg.stage == "build":
        from harness.files import clean_stale_temps
        from harness.names import check_name

        clean_stale_temps(Path(cfg.data_dir) / check_name(str(cfg.dataset.name), "dataset.name"))
        summary = instantiate_cached(cfg.dataset).build(cfg.data_dir)
        log.info("built dataset %s into %s", cfg.dataset.name, cfg.data_dir)
        if summary and summary.get("n_failed") and not (summary.get("n_built") or summary.get("n_skipped")):
            raise BuildFailed(f"dataset {cfg.dataset.name}: every one of its {summary['n_failed']} samples failed "
                              "to build (each error is logged above)")
        return summary
    raise ValueError(f"stage must be edit, score, summarize, report, build, study or serve; got {cfg.stage!r}")


class BuildFailed(RuntimeError):
    """`stage=build` built nothing: every sample failed."""

    exit_code = 1


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from harness.runner import EmptyDataset

    try:
        main(cfg, list(HydraConfig.get().overrides.task))
    except KeyboardInterrupt as e:  # one line, not a traceback; the run resumes where it stopped
        print(e if str(e) else "interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)
    except (EmptyDataset, BuildFailed) as e:
        (log.warning if isinstance(e, EmptyDataset) else log.error)("%s", e)
        sys.exit(e.exit_code)
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        log.error("%s", cause)  # the user's to fix: the message says what and where, a traceback would not help
        sys.exit(1)


def user_error(e: BaseException) -> BaseException | None:
    """The error itself (or the one Hydra wrapped while instantiating a config) when it is about the user's input
    (a missing folder, an unreachable hub, a folder of another config, an unsafe name, a bad setting), else None."""
    from hydra.errors import InstantiationException

    from harness.names import UnsafeName
    from harness.results import ConfigMismatch
    from study.types import StudyError

    expected = (FileNotFoundError, ConnectionError, ConfigMismatch, UnsafeName, StudyError)
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, (*expected, ValueError)):
        return e.__cause__
    return e if isinstance(e, expected) else None


if __name__ == "__main__":
    _hydra_main()
