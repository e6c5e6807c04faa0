"""--oracle label-studio, `entk-al label-studio push|pull` and LabelStudioOracle against a real
Label Studio server (one private server per session, tests/labelstudio_server.py). The tests
play the annotators through the REST API."""

import csv
import json

import httpx
import numpy as np
import pytest
import torch
from clitools import cli

sdk = pytest.importorskip("label_studio_sdk",
                          reason="label-studio-sdk not installed: pip install 'entk-al[labelstudio]'")
import labelstudio_server as lss  # noqa: E402

if lss.executable() is None:
    pytest.skip("label-studio server not installed: pip install label-studio, or set ENTK_AL_LABEL_STUDIO to its "
                "executable", allow_module_level=True)

import entk_al.run.labelstudio as ls  # noqa: E402
from entk_al.data import load_dataset  # noqa: E402
from entk_al.errors import LabelStudioError  # noqa: E402
from entk_al.run.config import RunConfig  # noqa: E402
from entk_al.run.loop import ActiveLearningLoop  # noqa: E402

FAST = dict(initial=10, query=5, epochs=1, min_steps=5, subset=200, strategy="margin")
FAST_ARGS = ["--initial", "10", "--query", "5", "--epochs", "1", "--min-steps", "5", "--subset", "200",
             "--strategy", "margin", "-q"]


@pytest.fixture(scope="session")
def server(tmp_path_factory, request):
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    template = cache.mkdir("label-studio") / lss.template_key() if cache is not None else None
    proc, srv = lss.start(tmp_path_factory.mktemp("label-studio"), template)
    yield srv
    lss.stop(proc)


@pytest.fixture(scope="session")
def admin(server):
    """The test's own client: it plays the annotators."""
    return sdk.LabelStudio(base_url=server.url, api_key=server.token)


@pytest.fixture(scope="session")
def annotators(admin):
    """Two more annotators' user ids (annotations are created on their behalf)."""
    return [admin.users.create(email=f"annotator{i}@example.com", username=f"annotator{i}").id for i in (2, 3)]


@pytest.fixture
def token_env(server, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.setenv("ENTK_AL_LS_TOKEN", server.token)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def strip_timing(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def run_tasks(admin, run_dir, round_idx):
    """The tasks of the run in ``run_dir`` for one round, as the annotators see them (task id order)."""
    state = json.loads((run_dir / "labelstudio.json").read_text())
    return sorted((t for t in admin.tasks.list(project=state["project"], fields="all")
                   if t.data.get("entk_al_tag") == state["tag"] and t.data.get("entk_al_round") == round_idx),
                  key=lambda t: t.id)


def annotate(admin, task, label=None, *, user=None, skip=False):
    result = [] if skip else [{"from_name": "label", "to_name": "item", "type": "choices",
                               "value": {"choices": [label]}}]
    kwargs = dict(completed_by=user) if user is not None else {}
    admin.annotations.create(id=task.id, result=result, was_cancelled=skip, **kwargs)


def pending(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["pending"]


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_three_rounds_through_label_studio_match_the_simulated_run(server, admin, token_env, tmp_path, capsys,
                                                                   digits):
    """Annotators answering with the true labels reproduce the simulated run exactly: same
    queried ids in every round, same accuracies; the queue is the strategy's order."""
    sim = ActiveLearningLoop(RunConfig(**FAST, rounds=3), tmp_path / "sim", dataset=digits).run()
    truth = digits.y_train.numpy()
    run_dir = tmp_path / "ls"
    code, out, err = cli(capsys, "run", "--oracle", "label-studio", "--ls-url", server.url, "--ls-project",
                         f"digits {tmp_path.name}", "--out", run_dir, "--rounds", "3", *FAST_ARGS)
    stops = 0
    while "waiting for labels" in out:
        assert code == 0 and "Label Studio project" in out, (out, err)
        stops += 1
        want = pending(run_dir)
        tasks = run_tasks(admin, run_dir, want["round"])
        assert [t.data["entk_al_id"] for t in tasks] == want["ids"]  # imported best first
        assert [t.data["acquisition_rank"] for t in tasks] == list(range(1, len(tasks) + 1))
        assert all(t.data["image"].startswith("data:image/png;base64,") for t in tasks)
        with open(run_dir / "queries" / ("initial.csv" if want["round"] < 0 else f"round_{want['round']:03d}.csv"),
                  newline="") as fh:
            guesses = [r["guess"] for r in csv.DictReader(fh)]
        if want["round"] < 0:
            assert all(not t.predictions for t in tasks) and all(t.data["acquisition_score"] is None for t in tasks)
        else:
            scores = [t.data["acquisition_score"] for t in tasks]
            assert scores == sorted(scores, reverse=True) and scores == pytest.approx(want["scores"])
            # the pre-annotation is the model's guess (the queries file's), scored by its probability
            assert [t.predictions[0].result[0]["value"]["choices"][0] for t in tasks] == guesses
            assert all(0.1 <= t.predictions[0].score <= 1 for t in tasks)
        for t in tasks:
            annotate(admin, t, digits.classes[truth[t.data["entk_al_id"]]])
        code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 0 and out.startswith("done:"), (out, err)
    assert stops == 4  # the initial set and rounds 0, 1, 2
    got = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert strip_timing(got) == strip_timing(sim)
    assert [r["queried"] for r in got] == [r["queried"] for r in sim]
    assert sorted(p.name for p in (run_dir / "labels").iterdir()) == [
        "initial.csv", "round_000.csv", "round_001.csv", "round_002.csv"]
    for name, data in snapshot(run_dir).items():  # the token is written nowhere
        assert server.token.encode() not in data, name


@pytest.fixture
def files_run(tmp_path, capsys, digits):
    """A --oracle files run waiting for the labels of its initial set (10 ids)."""
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--oracle", "files", "--out", run_dir, "--rounds", "1", *FAST_ARGS)
    assert code == 0 and "waiting for labels" in out, (out, err)
    return run_dir


def test_push_pull_with_several_annotators(server, admin, annotators, token_env, files_run, tmp_path, capsys,
                                           digits):
    """push/pull for a files run: majority over annotators, ties and skips wait, partial pulls
    record nothing for the run but keep what they found, even for a task deleted later."""
    run_dir, truth, names = files_run, digits.y_train.numpy(), digits.classes
    where = ["--ls-url", server.url, "--ls-project", f"votes {tmp_path.name}"]
    code, out, err = cli(capsys, "label-studio", "push", run_dir, *where)
    assert code == 0 and "10 queries of the initial set are tasks" in out, (out, err)
    assert cli(capsys, "label-studio", "push", run_dir)[0] == 0  # again: no duplicate tasks
    tasks = run_tasks(admin, run_dir, -2)
    assert [t.data["entk_al_id"] for t in tasks] == pending(run_dir)["ids"]
    u2, u3 = annotators
    right = [names[truth[t.data["entk_al_id"]]] for t in tasks]
    wrong = [names[(truth[t.data["entk_al_id"]] + 1) % 10] for t in tasks]
    annotate(admin, tasks[0], right[0])
    annotate(admin, tasks[0], right[0], user=u2)      # agree
    annotate(admin, tasks[1], right[1])
    annotate(admin, tasks[1], right[1], user=u2)
    annotate(admin, tasks[1], wrong[1], user=u3)      # 2 against 1
    annotate(admin, tasks[2], right[2])
    annotate(admin, tasks[2], wrong[2], user=u2)      # tie: waits
    annotate(admin, tasks[3], skip=True)              # skipped: waits
    annotate(admin, tasks[5], wrong[5])
    annotate(admin, tasks[5], right[5])               # the same annotator's latest counts
    for j in range(6, 10):
        annotate(admin, tasks[j], right[j])
    # tasks[4]: not annotated yet
    code, out, err = cli(capsys, "label-studio", "pull", run_dir)
    assert code == 0 and "waiting" in out and "7 of 10 labeled" in out, (out, err)
    assert "1 not annotated yet" in out and "1 skipped" in out and "1 with annotators tied" in out
    assert not (run_dir / "labels").exists()
    kept = json.loads((run_dir / "labelstudio.json").read_text())["kept"]["-2"]
    assert kept == {str(t.data["entk_al_id"]): right[j] for j, t in enumerate(tasks) if j in (0, 1, 5, 6, 7, 8, 9)}
    admin.tasks.delete(id=tasks[0].id)                # labels pulled once are kept
    annotate(admin, tasks[2], right[2], user=u3)
    annotate(admin, tasks[3], right[3])               # labeled after all
    annotate(admin, tasks[4], right[4])
    code, out, err = cli(capsys, "label-studio", "pull", run_dir)
    assert code == 0 and "recorded 10 labels" in out and "entk-al run --resume" in out, (out, err)
    with open(run_dir / "labels" / "initial.csv", newline="") as fh:
        got = {int(r["id"]): r["label"] for r in csv.DictReader(fh)}
    assert got == {t.data["entk_al_id"]: right[j] for j, t in enumerate(tasks)}
    code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 0 and "round_000.csv" in out, (out, err)


def _incompatible_project(admin, tmp_path):
    cfg = ('<View><Image name="img" value="$image"/><Choices name="animal" toName="img">'
           '<Choice value="cat"/><Choice value="dog"/></Choices></View>')
    return str(admin.projects.create(title=f"animals {tmp_path.name}", label_config=cfg).id)


@pytest.mark.parametrize("case,needle", [
    ("wrong_url", "cannot reach Label Studio"),
    ("not_label_studio", "does not answer like a Label Studio server"),
    ("bad_token", "refused the access token"),
    ("no_such_project", "has no project 987654"),
    ("incompatible_config", "does not fit this run: choices not among the classes ['cat', 'dog']"),
    ("unknown_class", "unknown class 'giraffe'"),
    ("duplicate_task", "is labeled twice (first on task"),
    ("stray_task", "was not queried in the initial set; delete that task"),
])
def test_bad_input_is_one_line_and_leaves_the_run_intact(server, admin, token_env, files_run, tmp_path, capsys,
                                                         monkeypatch, case, needle):
    monkeypatch.setattr(ls, "BACKOFF_S", (0.0, 0.0))
    run_dir = files_run
    url, project, command = server.url, f"bad {case} {tmp_path.name}", "push"
    if case == "wrong_url":
        url = f"http://127.0.0.1:{lss.free_port()}"
    elif case == "not_label_studio":
        url = f"{server.url}/no/such/place"
    elif case == "bad_token":
        monkeypatch.setenv("ENTK_AL_LS_TOKEN", "not-a-token-" + "x" * 20)
    elif case == "no_such_project":
        project = "987654"
    elif case == "incompatible_config":
        project = _incompatible_project(admin, tmp_path)
    else:  # bad annotations, found by pull
        assert cli(capsys, "label-studio", "push", run_dir, "--ls-url", url, "--ls-project", project)[0] == 0
        tasks = run_tasks(admin, run_dir, -2)
        if case == "unknown_class":
            annotate(admin, tasks[1], "giraffe")
        else:  # a copy of a task (imported twice), or a task of this run for an id it did not query
            data = dict(tasks[1].data, entk_al_id=tasks[1].data["entk_al_id"] if case == "duplicate_task" else 1346)
            admin.projects.import_tasks(id=tasks[1].project, request=[{"data": data}])
            for t in (tasks[1], run_tasks(admin, run_dir, -2)[-1]):
                annotate(admin, t, "3")
        command = "pull"
    before = snapshot(run_dir)
    code, out, err = cli(capsys, "label-studio", command, run_dir, "--ls-url", url, "--ls-project", project)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err and server.token not in err, err
    assert snapshot(run_dir) == before


def test_a_push_that_fails_is_redone_on_resume(server, admin, token_env, tmp_path, capsys, monkeypatch):
    """The server goes away between the selection and the push: the queries and checkpoint are
    on disk, the command stops with one line, and --resume pushes them."""
    def gone(*args, **kwargs):
        raise httpx.ConnectError("the server went away")

    monkeypatch.setattr(ls, "BACKOFF_S", (0.0,))
    monkeypatch.setattr(ls.LabelStudioOracle, "_import_missing", gone)
    run_dir = tmp_path / "run"
    args = ["--ls-url", server.url, "--ls-project", f"push fails {tmp_path.name}"]
    code, out, err = cli(capsys, "run", "--oracle", "label-studio", *args, "--out", run_dir, *FAST_ARGS)
    assert code == 2 and "cannot reach Label Studio" in err and "creating 10 tasks" in err, err
    assert (run_dir / "queries" / "initial.csv").is_file() and len(pending(run_dir)["ids"]) == 10
    monkeypatch.undo()
    monkeypatch.setenv("ENTK_AL_LS_TOKEN", server.token)
    code, out, err = cli(capsys, "run", "--resume", run_dir, "-q")
    assert code == 0 and "0 of 10 labeled; 10 not annotated yet" in out, (out, err)
    assert [t.data["entk_al_id"] for t in run_tasks(admin, run_dir, -2)] == pending(run_dir)["ids"]


def test_run_with_an_incompatible_project_fails_before_writing(server, admin, token_env, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "run", "--oracle", "label-studio", "--ls-url", server.url, "--ls-project",
                         _incompatible_project(admin, tmp_path), "--out", run_dir, *FAST_ARGS)
    assert code == 2 and "does not fit" in err and err.count("\n") == 1, err
    assert not run_dir.exists()


class Flaky(httpx.BaseTransport):
    """Passes requests to the server, except that it fails ``fail`` of them from the next one on."""

    def __init__(self):
        self.inner, self.fail = httpx.HTTPTransport(), 0

    def handle_request(self, request):
        if self.fail > 0:
            self.fail -= 1
            raise httpx.ConnectError("the server went away", request=request)
        return self.inner.handle_request(request)


def test_python_oracle_text_tasks_and_a_server_that_goes_away(server, admin, tmp_path, monkeypatch):
    """The library interface (connect, push, pull) on a vector pool, shown as text; requests
    that fail are retried with backoff, and a pull that cannot finish changes nothing."""
    from entk_al.run.oracle import LabelStudioOracle  # the lazy re-export

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    classes = ["low", "high"]
    flaky = Flaky()
    state = tmp_path / "state.json"
    oracle = LabelStudioOracle(server.url, f"vectors {tmp_path.name}", server.token, state_file=state,
                               httpx_client=httpx.Client(transport=flaky, timeout=30))
    assert "token" not in repr(oracle) and server.token not in repr(oracle)
    oracle.connect(classes, kind="text")
    ids = np.array([4, 1, 3])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    tasks = oracle.push(ids, round=0, inputs=x[ids], probs=probs, scores=[3.0, 2.0, float("nan")])
    assert sorted(tasks) == [1, 3, 4]
    shown = {t.data["entk_al_id"]: t for t in admin.tasks.list(project=oracle.project_id, fields="all")}
    assert shown[4].data["text"] == "[" + ", ".join(f"{v:.4g}" for v in x[4].astype(np.float64)) + "]"
    assert shown[3].data["acquisition_score"] is None and shown[4].data["acquisition_score"] == 3.0
    assert shown[1].predictions[0].result[0]["value"]["choices"] == ["low"]
    assert oracle.pull(ids, round=0) == {}
    for i, t in shown.items():
        if i != 3:
            annotate(admin, t, classes[int(x[i].sum() > 0)])
    sleeps = []
    monkeypatch.setattr(ls.time, "sleep", sleeps.append)
    flaky.fail = 2                                    # two requests lost: retried after 0.5 s, 1 s
    report = oracle.pull_report(ids, round=0)
    assert sleeps == [0.5, 1.0]
    assert report.labels == {i: int(x[i].sum() > 0) for i in (1, 4)} and report.waiting == [3]
    before = state.read_bytes()
    annotate(admin, shown[3], classes[int(x[3].sum() > 0)])
    flaky.fail = 100                                  # gone for good
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio .* 5 tries"):
        oracle.pull_report(ids, round=0)
    assert state.read_bytes() == before               # nothing half-done
    flaky.fail = 0                                    # back: the same call goes on
    assert oracle.pull(ids, round=0) == {i: int(x[i].sum() > 0) for i in (1, 3, 4)}


def test_active_learner_pushes_its_queries_and_pulls_partial_labels(server, admin, tmp_path, digits):
    """ActiveLearner(..., oracle=LabelStudioOracle(...)): query() pushes the round's ids best
    first with the model's guesses and the strategy's scores; pull() adds what annotators
    finished, the round ends only when all are labeled, and a resumed learner pulls the rest."""
    import entk_al
    from entk_al.run.labelstudio import LabelStudioOracle

    truth = digits.y_train.numpy()
    pool = digits.x_train[:400]
    first = np.arange(0, 400, 20)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # the user's own cross-entropy training
        loss = torch.nn.functional.cross_entropy(model(pool[first]), torch.as_tensor(truth[first]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    run = tmp_path / "learner"
    project = f"learner {tmp_path.name}"

    def oracle():
        return LabelStudioOracle(server.url, project, server.token, state_file=run / ls.STATE_FILE)

    learner = entk_al.ActiveLearner(pool, "margin", out=run, labeled_ids=first, labels=truth[first],
                                    classes=list(digits.classes), oracle=oracle())
    q = learner.query(model, 5)
    tasks = run_tasks(admin, run, 0)
    assert [t.data["entk_al_id"] for t in tasks] == q.ids.tolist()  # imported best first
    score_of = dict(zip(q.score_ids.tolist(), q.scores.tolist()))
    assert [t.data["acquisition_score"] for t in tasks] == pytest.approx([score_of[i] for i in q.ids.tolist()])
    with torch.no_grad():
        guess = model(pool[torch.from_numpy(q.ids)]).argmax(1).tolist()
    assert [t.predictions[0].result[0]["value"]["choices"][0] for t in tasks] == [digits.classes[c] for c in guess]
    config = json.loads((run / "config.json").read_text())
    assert config["oracle"] == "label-studio" and config["ls_url"] == server.url and server.token not in str(config)

    for t in tasks[:3]:
        annotate(admin, t, digits.classes[truth[t.data["entk_al_id"]]])
    report = learner.pull()
    assert not report.complete and sorted(report.labels) == sorted(q.ids[:3].tolist())
    assert len(learner.labeled_ids) == 23 and learner.round == 0 and learner.pending is not None
    assert learner.pull().labels.keys() == report.labels.keys()  # pulling again adds nothing twice

    again = entk_al.ActiveLearner.resume(run, pool, oracle=oracle())  # e.g. the next morning
    assert again.round == 0 and again.pending.tolist() == q.ids.tolist()
    for t in tasks[3:]:
        annotate(admin, t, digits.classes[truth[t.data["entk_al_id"]]])
    assert again.pull().complete
    assert again.round == 1 and again.pending is None
    assert np.array_equal(again.labels, truth[again.labeled_ids]) and len(again.labeled_ids) == 25
    q1 = again.query(model, 5)
    assert [t.data["entk_al_id"] for t in run_tasks(admin, run, 1)] == q1.ids.tolist()
    assert not np.isin(q1.ids, q.ids).any()
