"""What `compare` reads of a run when its config.yaml artifact is gone."""

import pandas as pd

from miso_bench.analysis.compare import load_run
from miso_bench.tracking import Tracker


def test_a_run_without_its_config_keeps_its_bootstrap_block_from_its_params(tmp_path):
    """compare fell back to 1000 m blocks without a word (the run used 5000 m)."""
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker("exp", uri)
    oof = tmp_path / "oof_predictions.parquet"
    pd.DataFrame({"id": [1, 2], "fold": [0, 1], "observed": ["0", "1"]}).to_parquet(oof)
    with tracker.run("r") as run_id:
        tracker.log_params(run_id, {"eval.block_size_m": 5000.0})
        tracker.log_artifact(run_id, oof)
    record = load_run(run_id, uri)
    assert record.config["eval"]["block_size_m"] == 5000.0
