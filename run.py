"""The harness's single entry point.

    python run.py method=videoshop dataset=sample          edit + score one method on one dataset
    python run.py -m method=identity,static,oracle         a sweep, in one process (models loaded once)
    python run.py -m experiment=table5                     a preset sweep
    python run.py stage=score method=...                   re-score saved edits with the current metrics
    python run.py stage=report                             tables from everything under results_dir
    python run.py stage=build dataset=magicbrush           prepare a dataset into data_dir
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)

log = logging.getLogger("run")


def main(cfg: DictConfig, overrides: list[str] = ()) -> dict | None:
    """Run one job of the config; also callable from tests with a composed config."""
    from harness.cache import instantiate_cached
    from harness.runner import resolve_device, run

    cfg.device = resolve_device(cfg.device)
    if cfg.get("threads") is not None:
        import torch

        torch.set_num_threads(int(cfg.threads))
    if cfg.stage in ("edit", "score"):
        return run(cfg, overrides)
    if cfg.stage == "report":
        from reports.tables import write_report

        return write_report(cfg.results_dir, cfg.get("report"))
    if cfg.stage == "build":
        summary = instantiate_cached(cfg.dataset).build(cfg.data_dir)
        log.info("built dataset %s into %s", cfg.dataset.name, cfg.data_dir)
        return summary
    raise ValueError(f"stage must be edit, score, report or build; got {cfg.stage!r}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    main(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    _hydra_main()
