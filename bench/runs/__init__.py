"""The run contract: a run folder's layout and status (:mod:`.folder`), one run's life in it
(:mod:`.lifecycle`), the metrics.json record every kind of run writes (:mod:`.record`), the
metrics and predictions files (:mod:`.files`), atomic writes (:mod:`.atomic`) and what a failed
write means (:mod:`.disk_errors`). Everything that reads or writes results goes through here.
"""

from bench.runs.atomic import (atomic_path, fsync_file, read_json, remove_stale_temporaries, write_bytes_atomic,
                               write_csv_atomic, write_json_atomic, write_text_atomic)
from bench.runs.disk_errors import save_torch_atomic  # with what it was writing said when the disk is full
from bench.runs.folder import (STATUS_COMPLETED, STATUS_FAILED, STATUS_RUNNING, RunBusy, RunDir, config_hash,
                               experiment_dir, headline, iter_run_dirs, model_dirname, selection_score)
from bench.runs.lifecycle import RunLifecycle

__all__ = [
    "RunDir", "RunLifecycle", "RunBusy", "STATUS_RUNNING", "STATUS_COMPLETED", "STATUS_FAILED", "experiment_dir",
    "model_dirname", "iter_run_dirs", "config_hash", "headline", "selection_score",
    "atomic_path", "fsync_file", "read_json", "remove_stale_temporaries", "save_torch_atomic", "write_bytes_atomic",
    "write_csv_atomic", "write_json_atomic", "write_text_atomic",
]
