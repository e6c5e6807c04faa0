"""Label Studio as the oracle: queried items become tasks, finished annotations come back as labels.

The interface, for ``entk-al run --oracle label-studio``, the library's learner or a loop of
your own (``pip install 'entk-al[labelstudio]'``; the access token is read from
``$ENTK_AL_LS_TOKEN`` or ``$LABEL_STUDIO_API_KEY`` unless given)::

    oracle = LabelStudioOracle("http://localhost:8080", "digits AL")  # project ID or title
    oracle.connect(classes, kind="image")  # finds/creates the project, writes/checks its label config
    oracle.push(ids, round=r, inputs=x[ids], probs=p, scores=s)  # tasks, best first
    ...  # annotators label in Label Studio
    labels = oracle.pull(ids, round=r)  # {pool id: class index} of the finished tasks

:meth:`LabelStudioOracle.pull_report` says what is still missing (not annotated, skipped,
annotators tied, no task). Answers pass the same checks as ``entk-al label``
(:func:`entk_al.run.oracle.check_answers`); several annotators are reconciled by majority
(:func:`entk_al.run.labelstudio_tasks.resolve_task`). Every request is retried with backoff
(:data:`BACKOFF_S`) on connection errors and server errors; a pull reads everything before
it writes anything, so a server that goes away mid-pull costs nothing but a rerun.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, EntkAlError, LabelStudioError
from ..fileio import write_json
from .config import check_url
from .labelstudio_tasks import LabelSetup, label_config, read_label_config, resolve_task, task_payload
from .oracle import check_answers

__all__ = ["LabelStudioOracle", "PullReport", "token_from_env", "TOKEN_ENV", "STATE_FILE", "BACKOFF_S"]

#: environment variables holding the access token, in the order they are read.
TOKEN_ENV = ("ENTK_AL_LS_TOKEN", "LABEL_STUDIO_API_KEY")
#: seconds to wait before each retry of a request that failed on the way (connection refused
#: or reset, timeout, HTTP 429/5xx): 5 tries over about 7.5 s, then one-line error.
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
#: file in a run directory recording where its tasks went (no token): url, project, tag, kept labels.
STATE_FILE = "labelstudio.json"
#: tasks per import request.
IMPORT_CHUNK = 200
_NO_SDK_RETRY = {"max_retries": 0}  # one retry policy: ours


def token_from_env() -> str | None:
    """The Label Studio access token from the environment (:data:`TOKEN_ENV`), or None."""
    for name in TOKEN_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _sdk():
    try:
        import httpx
        import label_studio_sdk
    except ImportError:
        raise ConfigError("Label Studio needs the label-studio-sdk package: "
                          "pip install 'entk-al[labelstudio]'") from None
    return label_studio_sdk, httpx


@dataclass
class PullReport:
    """What a pull found for the queried ids of one round.

    Attributes:
        round: the round.
        ids: the queried pool ids asked about.
        labels: pool id -> class index for every finished id.
        waiting: ids whose task has no annotation yet.
        skipped: ids whose task every annotator skipped.
        conflicts: ids whose annotators are tied between classes.
        missing: ids with no task in the project (not pushed yet, or deleted).
        task_of: pool id -> Label Studio task id.
    """

    round: int
    ids: list[int]
    labels: dict[int, int] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    conflicts: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    task_of: dict[int, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every asked id has a label."""
        return all(i in self.labels for i in self.ids)

    def summary(self) -> str:
        """One line: how many are labeled and why the others are not."""
        def some(ids: list[int]) -> str:
            return f"ids {ids[:5]}{', ...' if len(ids) > 5 else ''}"

        parts = [f"{len(self.labels)} of {len(self.ids)} labeled"]
        if self.waiting:
            parts.append(f"{len(self.waiting)} not annotated yet")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped by every annotator ({some(self.skipped)}): "
                         f"label them, a skipped task cannot be left out")
        if self.conflicts:
            parts.append(f"{len(self.conflicts)} with annotators tied ({some(self.conflicts)}): "
                         f"add an annotation to break the tie")
        if self.missing:
            parts.append(f"{len(self.missing)} without a task ({some(self.missing)}): "
                         f"push them again with 'entk-al label-studio push'")
        return "; ".join(parts)


class LabelStudioOracle:
    """Human-in-the-loop oracle backed by a Label Studio project (see the module docstring).

    Deferred like :class:`~entk_al.run.oracle.FileOracle`: a run stops after :meth:`push` and
    goes on once :meth:`pull` has every label; calling it mid-selection raises.

    Args:
        url: the server, ``http[s]://HOST[:PORT]``.
        project: the project's numeric ID, or its title (a title not found is created by
            :meth:`connect`).
        token: an access token (a personal access token, or a legacy token where the
            organization allows them); default: :func:`token_from_env`. It is kept only in
            memory: never written, never part of a message.
        tag: marks this run's tasks (task data ``entk_al_tag``), so that several runs can
            share a project; default: the tag in ``state_file``, else a new one
            (``<folder>-<6 hex>``), else ``"entk-al"``.
        state_file: JSON file recording the project, tag and labels pulled so far
            (:data:`STATE_FILE` in a run directory); None keeps nothing on disk.
        timeout_s: seconds to wait for one HTTP response.
        httpx_client: an ``httpx.Client`` for the SDK (proxies, certificates, tests).

    Raises:
        ConfigError: the SDK is not installed, no token, or a malformed URL.
        LabelStudioError: ``state_file`` is unreadable or records another project.
    """

    deferred = True
    name = "label-studio"

    def __init__(self, url: str, project: int | str, token: str | None = None, *, tag: str | None = None,
                 state_file: str | Path | None = None, timeout_s: float = 30.0, httpx_client: Any = None):
        _sdk()
        self.url = check_url(str(url).strip(), "--ls-url").rstrip("/")
        self.project_spec = str(project).strip()
        if not self.project_spec:
            raise ConfigError("the Label Studio project must be an ID or a title, got an empty string")
        self._token = token or token_from_env()
        if not self._token:
            raise ConfigError(f"no Label Studio access token: set {TOKEN_ENV[0]} (or {TOKEN_ENV[1]}) to a personal "
                              f"access token (in Label Studio: Account & Settings > Personal Access Token)")
        self.timeout_s = float(timeout_s)
        self._httpx_client = httpx_client
        self.state_file = Path(state_file) if state_file is not None else None
        self._state = self._read_state()
        self.tag = tag or self._state.get("tag") or (
            f"{self.state_file.parent.resolve().name}-{secrets.token_hex(3)}" if self.state_file else "entk-al")
        self.project_id: int | None = None
        self.project_title: str | None = None
        self.setup: LabelSetup | None = None
        self.classes: list[str] = []
        self._client: Any = None
        self._model_version = ""

    def __repr__(self) -> str:  # never the token
        return f"LabelStudioOracle(url={self.url!r}, project={self.project_spec!r}, tag={self.tag!r})"

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        raise ConfigError("this strategy asks for labels during selection (sequential mode), which "
                          "--oracle label-studio cannot answer; use batch mode or --oracle simulated")

    @property
    def where(self) -> str:
        """The project, for messages: ``Label Studio project 3 ('digits') at http://...``."""
        title = f" ({self.project_title!r})" if self.project_title else ""
        return f"Label Studio project {self.project_id or self.project_spec}{title} at {self.url}"

    # -- connecting --------------------------------------------------------------------
    def connect(self, classes: Sequence[str], kind: str | None = None) -> int:
        """Reach the server, find the project (create it when a title is not found) and
        write the label config of a project that has none, or check the one it has.

        Args:
            classes: the dataset's class names (index = class id).
            kind: ``"image"`` or ``"text"`` (:func:`~entk_al.run.labelstudio_tasks.data_kind`), what
                the tasks will show; None only reads labels back (no project is created, no
                config written, any object tag accepted).

        Returns:
            the project's numeric ID.

        Raises:
            LabelStudioError: the server cannot be reached or is not Label Studio, the token
                is refused, the project does not exist (by ID), or its label config does not
                fit (:func:`~entk_al.run.labelstudio_tasks.read_label_config`).
        """
        self.classes = [str(c) for c in classes]
        self._call("checking the server", self._health)
        project = self._find_project(kind)
        self.project_id, self.project_title = int(project.id), str(project.title or "")
        where = f"Label Studio project {self.project_id} ({self.project_title!r})"
        setup = read_label_config(project.label_config or "", self.classes, kind, where)
        if setup is None:
            if kind is None:
                raise LabelStudioError(f"{where} has no label config yet; push the queries to it first")
            xml = label_config(self.classes, kind)
            # Sequential sampling: annotators get tasks in import order, which is the strategy's.
            self._call("writing the label config", self.client.projects.update, id=self.project_id,
                       label_config=xml, sampling="Sequential sampling", show_collab_predictions=True,
                       request_options=_NO_SDK_RETRY)
            setup = read_label_config(xml, self.classes, kind, where)
        self.setup = setup
        self._model_version = str(getattr(project, "model_version", "") or "")
        self._save_state()
        return self.project_id

    @property
    def client(self) -> Any:
        """The ``label_studio_sdk.LabelStudio`` client (made on first use)."""
        if self._client is None:
            sdk, _ = _sdk()
            from label_studio_sdk.core.api_error import ApiError

            try:
                self._client = sdk.LabelStudio(base_url=self.url, api_key=self._token, timeout=self.timeout_s,
                                               httpx_client=self._httpx_client)
            except ApiError as exc:  # an expired personal access token is refused right here
                raise self._auth_error(exc) from None
        return self._client

    def _health(self) -> None:
        _, httpx = _sdk()
        client = self._httpx_client or httpx
        resp = client.get(f"{self.url}/health", timeout=self.timeout_s)
        if resp.status_code >= 500:
            resp.raise_for_status()  # retried
        try:
            ok = resp.json().get("status") == "UP"
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise LabelStudioError(f"{self.url} does not answer like a Label Studio server (GET /health: HTTP "
                                   f"{resp.status_code}); check --ls-url")

    def _find_project(self, kind: str | None) -> Any:
        from label_studio_sdk.core.api_error import ApiError

        spec, known = self.project_spec, self._state.get("project")
        if known is not None and spec not in (str(known), self._state.get("title")):
            raise LabelStudioError(f"the queries of this run went to Label Studio project {known} "
                                   f"({self._state.get('title')!r}), not {spec!r}; pass --ls-project {known}, or "
                                   f"delete {self.state_file} to start over in another project")
        if spec.isdigit() or known is not None:
            pid = int(spec) if spec.isdigit() else int(known)
            try:
                return self._call(f"reading project {pid}", self.client.projects.get, id=pid,
                                  request_options=_NO_SDK_RETRY, _missing_ok=True)
            except ApiError:
                raise LabelStudioError(f"Label Studio at {self.url} has no project {pid} that this token's user "
                                       f"can see; check --ls-project (an ID, or a title to create one)") from None
        found = self._call("listing projects", lambda: [
            p for p in self.client.projects.list(title=spec, page_size=100, request_options=_NO_SDK_RETRY)
            if p.title == spec])
        if len(found) > 1:
            raise LabelStudioError(f"{len(found)} Label Studio projects are titled {spec!r} "
                                   f"(IDs {[p.id for p in found]}); pass --ls-project ID")
        if found:
            return self._call(f"reading project {found[0].id}", self.client.projects.get, id=found[0].id,
                              request_options=_NO_SDK_RETRY)
        if kind is None:
            raise LabelStudioError(f"Label Studio at {self.url} has no project titled {spec!r}")
        created = self._call(f"creating project {spec!r}", self.client.projects.create, title=spec,
                             request_options=_NO_SDK_RETRY)
        return self._call(f"reading project {created.id}", self.client.projects.get, id=created.id,
                          request_options=_NO_SDK_RETRY)

    # -- push --------------------------------------------------------------------------
    def push(self, ids: Sequence[int] | np.ndarray, *, round: int, inputs: Any, probs: Any = None,
             scores: Sequence[float | None] | None = None, sources: Sequence[str] | None = None) -> dict[int, int]:
        """Make a task of every queried item that has none yet in this round (idempotent).

        Tasks are imported in the order of ``ids`` (the strategy's, best first), so that
        Label Studio's sequential queue is ordered by acquisition value; the task data also
        hold ``acquisition_rank`` and ``acquisition_score`` to sort by in the Data Manager.

        Args:
            ids: (k,) int64 global pool ids, in the strategy's order.
            round: the round that queried them (``-2``: the seeded initial set).
            inputs: (k, *input_shape) tensor or array, the items themselves.
            probs: (k, O) class probabilities of the current model, or None (no pre-annotation).
            scores: (k,) the strategy's acquisition scores (None/NaN where it has none), or None.
            sources: (k,) where each item came from, or None (the pool id).

        Returns:
            pool id -> task id, for every id.

        Raises:
            ConfigError: :meth:`connect` was not called with a ``kind``, or lengths differ.
            LabelStudioError: the server cannot be reached or refuses (after retries).
        """
        setup = self._require_setup("push")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        x = _numpy(inputs)
        p = None if probs is None else _numpy(probs)
        for what, arr in (("inputs", x), ("probs", p), ("scores", scores), ("sources", sources)):
            if arr is not None and len(arr) != len(ids):
                raise ConfigError(f"push: {len(ids)} ids but {len(arr)} {what}")
        tasks = [task_payload(setup, int(i), x[pos], tag=self.tag, round_idx=round, rank=pos + 1,
                              score=None if scores is None else scores[pos],
                              source=None if sources is None else str(sources[pos]),
                              probs=None if p is None else p[pos], classes=self.classes)
                 for pos, i in enumerate(ids.tolist())]
        for start in range(0, len(tasks), IMPORT_CHUNK):
            chunk = tasks[start:start + IMPORT_CHUNK]
            self._call(f"creating {len(chunk)} tasks", self._import_missing, chunk, round)
        have = self._call("listing tasks", self._task_ids, round)
        version = f"entk-al {self.tag}"
        mine = not self._model_version or self._model_version.startswith("entk-al ")
        if p is not None and mine and self._model_version != version:
            # Label Studio shows the pre-annotations of the project's model version: ours,
            # unless the project already shows another model's.
            self._call("selecting entk-al's predictions", self.client.projects.update, id=self.project_id,
                       model_version=version, request_options=_NO_SDK_RETRY)
            self._model_version = version
        return {i: have[i] for i in ids.tolist() if i in have}

    def _import_missing(self, chunk: list[dict], round_idx: int) -> None:
        # Listed again on every try: a request that created tasks but lost its answer is not repeated.
        have = self._task_ids(round_idx)
        todo = [t for t in chunk if t["data"]["entk_al_id"] not in have]
        if todo:
            self.client.projects.import_tasks(id=self.project_id, request=todo, return_task_ids=True,
                                              request_options=_NO_SDK_RETRY)

    def _task_ids(self, round_idx: int) -> dict[int, int]:
        return {int(t["data"]["entk_al_id"]): int(t["id"]) for t in sorted(self._tasks(round_idx),
                                                                          key=lambda t: -int(t["id"]))}

    def _tasks(self, round_idx: int) -> list[dict]:
        """This run's tasks of one round, with their annotations (server-side filter, checked here too)."""
        items = [{"filter": "filter:tasks:data.entk_al_tag", "operator": "equal", "type": "String", "value": self.tag},
                 {"filter": "filter:tasks:data.entk_al_round", "operator": "equal", "type": "Number",
                  "value": int(round_idx)}]
        query = json.dumps({"filters": {"conjunction": "and", "items": items}})
        out = []
        for t in self.client.tasks.list(project=self.project_id, fields="all", query=query, page_size=100,
                                        request_options=_NO_SDK_RETRY):
            data = t.data or {}
            if data.get("entk_al_tag") == self.tag and data.get("entk_al_round") == int(round_idx):
                out.append({"id": int(t.id), "data": data, "annotations": [dict(a) for a in t.annotations or []]})
        return out

    # -- pull --------------------------------------------------------------------------
    def pull_report(self, ids: Sequence[int] | None = None, *, round: int) -> PullReport:
        """Read the annotations of this run's tasks of ``round`` and check them.

        A task is labeled by majority of its annotators
        (:func:`~entk_al.run.labelstudio_tasks.resolve_task`); labeled tasks then pass
        :func:`~entk_al.run.oracle.check_answers` (pool ids queried in this round, one task per
        id, class names of the dataset). With a ``state_file``, labels pulled before are kept
        there and still count for ids whose task has since disappeared.

        Args:
            ids: the pool ids queried in ``round``; None: every id this run's tasks of the round hold.
            round: the round.

        Returns:
            the :class:`PullReport`.

        Raises:
            ConfigError: :meth:`connect` was not called.
            LabelError: an annotation without a class, with a class not in the config, a task
                for an id that was not queried in this round, or two tasks for one id.
            LabelStudioError: the server cannot be reached or refuses (after retries).
        """
        setup = self._require_setup("pull")
        tasks = self._call("reading annotations", self._tasks, round)
        asked = [int(i) for i in ids] if ids is not None else sorted({int(t["data"]["entk_al_id"]) for t in tasks})
        report = PullReport(round=round, ids=asked)
        origin = f"Label Studio project {self.project_id}"
        rows = []
        wanted = set(asked)
        for t in sorted(tasks, key=lambda t: t["id"]):
            place = f"task {t['id']}"
            answer = resolve_task(t["annotations"], setup, self.classes, f"{origin} {place}")
            raw_id = t["data"].get("entk_al_id")
            if answer.state == "labeled":
                rows.append((place, raw_id, answer.label))
            elif raw_id in wanted:
                getattr(report, {"waiting": "waiting", "skipped": "skipped", "conflict": "conflicts"}[answer.state]
                        ).append(int(raw_id))
            if raw_id in wanted:
                report.task_of.setdefault(int(raw_id), t["id"])
        labels = check_answers(rows, asked, self.classes, round, origin=origin, allow_missing=True,
                               stray_hint="delete that task in Label Studio, it is not one of this run's queries")
        report.labels = {i: int(c) for i, c in zip(asked, labels.tolist()) if c >= 0}
        kept = self._state.get("kept", {}).get(str(round), {})
        for i in asked:
            if i not in report.task_of:
                if str(i) in kept and kept[str(i)] in self.classes:
                    report.labels[i] = self.classes.index(kept[str(i)])
                else:
                    report.missing.append(i)
        if self.state_file is not None:
            self._state.setdefault("kept", {})[str(round)] = {str(i): self.classes[c] for i, c in
                                                               sorted(report.labels.items())}
            self._save_state()
        return report

    def pull(self, ids: Sequence[int] | None = None, *, round: int) -> dict[int, int]:
        """Pool id -> class index for every finished task of ``round`` (see :meth:`pull_report`)."""
        return self.pull_report(ids, round=round).labels

    # -- plumbing ----------------------------------------------------------------------
    def _require_setup(self, what: str) -> LabelSetup:
        if self.setup is None:
            raise ConfigError(f"LabelStudioOracle.{what}: call connect(classes, kind) first")
        return self.setup

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, _missing_ok: bool = False, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, retried after :data:`BACKOFF_S` on transient failures.

        Raises:
            LabelStudioError: still failing after the last retry, or refused (401/403, 4xx).
        """
        _, httpx = _sdk()
        from label_studio_sdk.core.api_error import ApiError

        reason = ""
        for attempt in range(len(BACKOFF_S) + 1):
            try:
                return fn(*args, **kwargs)
            except httpx.HTTPStatusError as exc:
                reason = f"HTTP {exc.response.status_code}"
            except httpx.TransportError as exc:
                reason = type(exc).__name__
            except ApiError as exc:
                code = exc.status_code or 0
                if code in (401, 403):
                    raise self._auth_error(exc) from None
                if code == 404 and _missing_ok:
                    raise
                if code < 500 and code != 429:
                    raise LabelStudioError(f"{self.where} refused {what} (HTTP {code}: {_detail(exc)})") from None
                reason = f"HTTP {code}"
            except ValueError as exc:  # JSON or schema errors: some other web server answered
                if isinstance(exc, EntkAlError):
                    raise
                raise LabelStudioError(f"{self.url} does not answer like a Label Studio server ({what}: "
                                       f"{type(exc).__name__}); check --ls-url") from None
            if attempt < len(BACKOFF_S):
                time.sleep(BACKOFF_S[attempt])
        raise LabelStudioError(f"cannot reach Label Studio at {self.url} while {what} ({reason}, "
                               f"{len(BACKOFF_S) + 1} tries); nothing was recorded: run the same command again "
                               f"once the server is back")

    def _auth_error(self, exc: Any) -> LabelStudioError:
        return LabelStudioError(f"Label Studio at {self.url} refused the access token (HTTP {exc.status_code}: "
                                f"{_detail(exc)}); set {TOKEN_ENV[0]} or {TOKEN_ENV[1]} to a personal access "
                                f"token (Label Studio: Account & Settings > Personal Access Token)")

    def _read_state(self) -> dict:
        if self.state_file is None or not self.state_file.is_file():
            return {}
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LabelStudioError(f"{self.state_file} is unreadable or corrupted ({type(exc).__name__}); "
                                   f"delete it to push this run's queries again") from None
        if not isinstance(state, dict):
            raise LabelStudioError(f"{self.state_file} is corrupted (not a JSON object); delete it")
        return state

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        self._state.update(url=self.url, project=self.project_id, title=self.project_title, tag=self.tag)
        write_json(self.state_file, self._state)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = " ".join(str(body[k]) for k in ("detail", "validation_errors") if body.get(k)) or body
    return " ".join(str(body).split())[:200]
