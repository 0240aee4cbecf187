"""Sweep summary: after a Hydra multirun, one row per job at the sweep root.

Each job writes `result.json` into its own output directory (see run.py); the summary is
gathered from those files, so it works with any launcher (local, submitit, ...).
"""

import csv
import json
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..process import rank
from ..training.result import RESULT_FILE

COLUMNS = ["job", "overrides", "status", "final_train_loss", "eval_loss", "global_step", "output_dir"]


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        if rank() != 0 or not os.path.isdir(sweep_dir):
            return
        rows = []
        for name in sorted(
            os.listdir(sweep_dir), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else n)
        ):
            job_dir = os.path.join(sweep_dir, name)
            overrides_file = os.path.join(job_dir, ".hydra", "overrides.yaml")
            if not os.path.isfile(overrides_file):
                continue
            with open(overrides_file) as f:
                overrides = [line[2:].strip() for line in f if line.startswith("- ")]
            result_file = os.path.join(job_dir, RESULT_FILE)
            result = {}
            if os.path.isfile(result_file):
                with open(result_file) as f:
                    result = json.load(f)
            rows.append(
                {
                    "job": name,
                    "overrides": " ".join(overrides),
                    "status": "completed" if result else "failed",
                    "final_train_loss": result.get("final_train_loss"),
                    "eval_loss": result.get("eval_loss"),
                    "global_step": result.get("global_step"),
                    "output_dir": result.get("output_dir", job_dir),
                }
            )
        with open(os.path.join(sweep_dir, "summary.json"), "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(sweep_dir, "summary.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"sweep summary ({len(rows)} jobs): {os.path.join(sweep_dir, 'summary.csv')}")
        failed = [row["job"] for row in rows if row["status"] == "failed"]
        if failed:  # the sweep ran to the end, but its exit status must still say it failed
            print(
                f"vicuna_sft: error: {len(failed)} of {len(rows)} sweep jobs failed: {failed}",
                file=sys.stderr,
            )
            sys.exit(1)
