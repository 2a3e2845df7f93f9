"""`ckptstudy`: the Hydra entry point. One job = one (model, step); the work is `ckptstudy.job.run_job`."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ckptstudy import results
from ckptstudy.config import register_configs
from ckptstudy.job import run_job, summary_line
from ckptstudy.record import Record

# Launchers that run jobs in other processes (joblib, submitit) unpickle `_hydra_main` there and compose
# the job's config again: importing this module must register the schemas, not only `main()`.
register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Record:
    record = run_job(cfg)
    print(summary_line(record), flush=True)
    failed = not record.ok and not record.outcome.skipped
    if failed and HydraConfig.get().mode == RunMode.RUN:
        path = results.record_path(cfg.paths.root, cfg.study, record.model, record.identity.step)
        print(f"error: {(record.outcome.error or {}).get('message')}\n(failure record: {path})", file=sys.stderr)
        sys.exit(1)
    return record


def main() -> None:
    """Console script `ckptstudy` (and `python -m ckptstudy`)."""
    _hydra_main()
