"""Every run of a research line, exported to the experiment trackers researchers already use.

    autoresearch export --mlflow [URI]          # pip install 'autoresearch[mlflow]'
    autoresearch export --wandb PROJECT         # pip install 'autoresearch[wandb]'

One tracker run per autoresearch run (an experiment's seed): its metrics (the decisive one, every
other number it reported, its wall time and memory peak), the experiment's knob values and seed as
parameters, and as tags the experiment's state, hypothesis (its description), agent, commit and
parent commit, the run's own state and the reason for it. Only finished experiments are exported,
and each run once: an export can be repeated (or run while a session goes on) and sends only what
is new. The ledger stays the record; these are copies for the tracker's views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .ledger import Ledger
from .records import Experiment, RunRecord

MARK = "autoresearch.run"  # the tag that says which ledger run a tracker run copies


class TrackerError(Exception):
    """The tracker's package is missing or refused the export; the message says what to do."""


@dataclass(frozen=True)
class Row:
    """One run with what a tracker shows of it."""

    key: str  # unique in the target: "<tag>/<experiment index>/<run id>"
    name: str  # "#3 seed 1"
    experiment: Experiment
    run: RunRecord
    params: dict
    tags: dict
    metrics: dict

    @property
    def started_ms(self) -> Optional[int]:
        return int(self.run.started_at * 1000) if self.run.started_at else None


def rows(ledger: Ledger, tag: str, metric_name: str) -> Iterator[Row]:
    """Every run of the finished experiments of research line `tag`, oldest first."""
    for experiment in ledger.experiments(tag):
        if not experiment.state.final:
            continue
        for run in experiment.runs:
            metrics = {k: float(v) for k, v in run.metrics.items() if isinstance(v, (int, float))}
            if run.metric is not None:
                metrics[metric_name] = run.metric
            metrics["run_seconds"] = run.seconds
            if run.peak_memory_mb is not None:
                metrics["peak_memory_mb"] = run.peak_memory_mb
            tags = {"state": experiment.state.value, "hypothesis": experiment.description[:4000],
                    "agent": experiment.agent, "commit": experiment.commit or "", "parent": experiment.parent or "",
                    "research_line": tag, "run_state": run.state.value, "reason": (run.reason or "")[:4000]}
            params = {**experiment.knobs, "seed": run.seed, "experiment": experiment.index, "budget": run.budget or ""}
            yield Row(f"{tag}/{experiment.index}/{run.id}", f"#{experiment.index} seed {run.seed}", experiment, run,
                      params, tags, metrics)


# ---------------------------------------------------------------------------- MLflow


def to_mlflow(ledger: Ledger, tag: str, metric_name: str, uri: Optional[str], experiment_name: str) -> int:
    """Runs not yet in MLflow experiment `experiment_name` at `uri` (None: MLflow's own default); how many."""
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackerError("export --mlflow needs MLflow: pip install 'autoresearch[mlflow]'") from None
    client = MlflowClient(uri) if uri else MlflowClient()
    found = client.get_experiment_by_name(experiment_name)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment_name)
    done = {run.data.tags.get(MARK) for run in client.search_runs([experiment_id], max_results=50000)}
    sent = 0
    for row in rows(ledger, tag, metric_name):
        if row.key in done:
            continue
        run = client.create_run(experiment_id, start_time=row.started_ms, run_name=row.name,
                                tags={MARK: row.key, **{f"autoresearch.{k}": v for k, v in row.tags.items()}})
        stamp = row.started_ms or 0
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, v, stamp, 0) for k, v in row.metrics.items()],
                         params=[Param(k, str(v)) for k, v in row.params.items()])
        ended = stamp + int(row.run.seconds * 1000) if row.started_ms else None
        client.set_terminated(run.info.run_id, "FINISHED" if row.run.state.value == "ok" else "FAILED", ended)
        sent += 1
    return sent


# ---------------------------------------------------------------------------- Weights & Biases


def to_wandb(ledger: Ledger, tag: str, metric_name: str, project: str, state_dir: Path, mode: Optional[str] = None,
             entity: Optional[str] = None, directory: Optional[Path] = None) -> int:
    """Runs not yet sent to W&B project `project` (mode: online, offline, or W&B's own default); how many.

    W&B cannot be asked offline what it holds, so the keys sent are remembered in `state_dir`."""
    try:
        import wandb
    except ImportError:
        raise TrackerError("export --wandb needs Weights & Biases: pip install 'autoresearch[wandb]'") from None
    record = state_dir / f"wandb-{entity or ''}-{project}.json".replace("/", "_")
    done = set(json.loads(record.read_text())) if record.exists() else set()
    sent = 0
    try:
        for row in rows(ledger, tag, metric_name):
            if row.key in done:
                continue
            run = wandb.init(project=project, entity=entity, mode=mode, dir=str(directory) if directory else None,
                             name=row.name, group=tag, job_type=row.experiment.state.value, notes=row.tags["hypothesis"],
                             tags=[row.experiment.state.value], config={**row.params, MARK: row.key},
                             reinit="create_new")
            run.log(row.metrics)
            run.summary.update(row.tags)
            run.finish(exit_code=0 if row.run.state.value == "ok" else 1)
            done.add(row.key)
            sent += 1
    finally:
        state_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(sorted(done)))
    return sent
