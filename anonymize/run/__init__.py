"""One anonymization run: its settings (:mod:`~anonymize.run.config`), its stages, its executors and
the orchestration that ties them to the output folder's guarantees (:mod:`~anonymize.run.pipeline`)."""

from anonymize.errors import RunError
from anonymize.run.config import RunConfig, run_config
from anonymize.run.folder import check_paths, default_output_dir
from anonymize.run.pipeline import Pipeline, run
from anonymize.run.progress import Progress, RunSummary

__all__ = ["Pipeline", "Progress", "RunConfig", "RunError", "RunSummary", "check_paths", "default_output_dir", "run", "run_config"]
