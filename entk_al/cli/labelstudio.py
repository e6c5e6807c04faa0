"""``entk-al label-studio push|pull RUN``: a run's pending queries to Label Studio, its answers back.

For runs with ``--oracle files`` (or ``label-studio``, to push or pull by hand): ``push``
makes tasks of the queries the run waits for, ``pull`` records the finished annotations in
``labels/round_XXX.csv`` exactly as ``entk-al label`` records a CSV, after the same checks;
``entk-al run --resume RUN`` then goes on. The access token comes from the environment
(``$ENTK_AL_LS_TOKEN`` or ``$LABEL_STUDIO_API_KEY``), never from an option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Send a run's pending queries to Label Studio and record the finished annotations "
                       "(pip install entk-al\\[labelstudio]; token in $LABEL_STUDIO_API_KEY).")

RunDir = Annotated[Path, typer.Argument(help="Run directory waiting for labels.")]
LsUrl = Annotated[Optional[str], typer.Option(
    "--ls-url", help="Label Studio server, e.g. http://localhost:8080 (default: where the run's tasks went, "
                     "else the run's --ls-url).")]
LsProject = Annotated[Optional[str], typer.Option(
    "--ls-project", help="Project ID, or a title (created by push if not found) (default: the run's).")]


def _oracle(run_dir: Path, ls_url: Optional[str], ls_project: Optional[str]):
    """The run's :class:`~entk_al.run.labelstudio.LabelStudioOracle`: options, else where its tasks
    went (``labelstudio.json``), else its configuration."""
    from ..run.labelstudio import STATE_FILE, LabelStudioOracle

    saved_url = saved_project = None
    for name, url_key, project_key in ((STATE_FILE, "url", "project"), ("config.json", "ls_url", "ls_project")):
        try:
            data = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            saved_url, saved_project = saved_url or data.get(url_key), saved_project or data.get(project_key)
    url, project = ls_url or saved_url, ls_project or saved_project
    if not url or not project:
        raise ConfigError(f"{run_dir} has not been sent to Label Studio yet; give --ls-url URL and --ls-project ID")
    return LabelStudioOracle(url, project, state_file=run_dir / STATE_FILE)


@app.command("push")
def push(run_dir: RunDir, ls_url: LsUrl = None, ls_project: LsProject = None) -> None:
    """Make Label Studio tasks of the queries RUN waits for, best first, with the model's guess.

    Tasks already in the project are kept (running push twice makes no duplicates). A new
    project, or one without a labeling setup, gets a config made from the class names.
    """
    from ..run.config import resolve_config
    from ..run.loop import ActiveLearningLoop
    from .label import pending_queries

    rnd, ids, _ = pending_queries(run_dir)
    cfg, _ = resolve_config(None, {}, run_dir)
    oracle = _oracle(run_dir, ls_url, ls_project)
    tasks = ActiveLearningLoop(cfg, run_dir, oracle=oracle).push_pending(oracle)
    which = "the initial set" if rnd < 0 else f"round {rnd}"
    typer.echo(f"{len(tasks)} queries of {which} are tasks in {oracle.where}; once they are annotated run: "
               f"entk-al label-studio pull {run_dir}")


@app.command("pull")
def pull(run_dir: RunDir, ls_url: LsUrl = None, ls_project: LsProject = None) -> None:
    """Record the finished annotations of the queries RUN waits for (checked as by entk-al label).

    With every query labeled, the labels go to labels/round_XXX.csv and the run can resume.
    Otherwise nothing is recorded for the run yet: the labels pulled so far are kept in
    RUN/labelstudio.json and the missing ones are listed; pull again later.
    """
    import numpy as np

    from ..run.oracle import write_labels
    from .label import class_counts, pending_queries

    rnd, ids, classes = pending_queries(run_dir)
    oracle = _oracle(run_dir, ls_url, ls_project)
    oracle.connect(classes)
    report = oracle.pull_report(ids, round=rnd)
    if not report.complete:
        typer.echo(f"waiting: {oracle.where}: {report.summary()}; pull again once they are annotated")
        return
    labels = np.array([report.labels[i] for i in ids], dtype=np.int64)
    path = write_labels(run_dir, rnd, ids, labels, classes)
    typer.echo(f"recorded {len(ids)} labels ({class_counts(labels, classes)}) in {path}; "
               f"continue with: entk-al run --resume {run_dir}")
