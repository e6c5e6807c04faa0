"""Label Studio payloads, label-config checks and the annotator vote rule, without a server."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from entk_al.errors import ConfigError, LabelError, LabelStudioError
from entk_al.run.config import RunConfig, resolve_config
from entk_al.run.labelstudio_tasks import (
    IMAGE_MIN_SIDE_PX,
    LabelSetup,
    data_kind,
    image_data_uri,
    label_config,
    read_label_config,
    resolve_task,
    task_payload,
    text_of,
)

CLASSES = ["cat", "dog", "bird"]
SETUP = LabelSetup(control="label", target="item", data_key="image", object_tag="Image")


def decode(uri):
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_image_data_uri_scales_contrast_and_enlarges_by_nearest_neighbour():
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8) * 0.5 - 3.0  # normalized values, any range
    img = decode(image_data_uri(x))
    factor = IMAGE_MIN_SIDE_PX // 8
    assert img.shape == (8 * factor, 8 * factor) and img.dtype == np.uint8
    small = img[::factor, ::factor]
    np.testing.assert_array_equal(small, np.round(np.arange(64).reshape(8, 8) / 63 * 255).astype(np.uint8))
    # each source pixel became a constant factor x factor block
    np.testing.assert_array_equal(img, np.kron(small, np.ones((factor, factor), np.uint8)))


def test_image_data_uri_rgb_constant_and_nonfinite():
    rgb = np.zeros((3, 200, 150), np.float32)
    rgb[0] = 1.0  # pure red after scaling
    img = decode(image_data_uri(rgb))
    assert img.shape == (200, 150, 3)  # large enough: not enlarged
    assert (img[..., 0] == 255).all() and (img[..., 1:] == 0).all()
    flat = decode(image_data_uri(np.full((1, 4, 4), np.nan)))
    assert (flat == 0).all()


def test_text_and_kind():
    assert text_of(np.array([1.0, -0.000123456, 12345.678])) == "[1, -0.0001235, 1.235e+04]"
    long = text_of(np.zeros(600))
    assert long.endswith(", ... (600 values)]") and long.count(",") == 512
    assert data_kind((1, 8, 8)) == "image" and data_kind((3, 32, 32)) == "image"
    assert data_kind((64,)) == "text" and data_kind((5, 8, 8)) == "text"


def test_task_payload_carries_prediction_scores_and_bookkeeping():
    x = np.zeros((1, 8, 8), np.float32)
    task = task_payload(SETUP, 17, x, tag="run-1", round_idx=2, rank=3, score=0.25, source="a.png",
                        probs=np.array([0.1, 0.7, 0.2]), classes=CLASSES)
    data = task["data"]
    assert data["image"].startswith("data:image/png;base64,")
    assert {k: data[k] for k in ("entk_al_id", "entk_al_round", "entk_al_tag", "acquisition_rank",
                                 "acquisition_score", "source")} == {
        "entk_al_id": 17, "entk_al_round": 2, "entk_al_tag": "run-1", "acquisition_rank": 3,
        "acquisition_score": 0.25, "source": "a.png"}
    (pred,) = task["predictions"]
    assert pred["score"] == pytest.approx(0.7)
    assert pred["result"] == [{"from_name": "label", "to_name": "item", "type": "choices",
                               "value": {"choices": ["dog"]}, "score": pytest.approx(0.7)}]
    bare = task_payload(SETUP, 3, x, tag="t", round_idx=-2, rank=1, score=float("nan"), source=None, probs=None,
                        classes=CLASSES)
    assert "predictions" not in bare and bare["data"]["acquisition_score"] is None and bare["data"]["source"] == "3"


def test_label_config_round_trip_and_escaping():
    pytest.importorskip("label_studio_sdk")
    classes = ['a "quoted" <class>', "b & c"]
    for kind, tag, key in (("image", "Image", "image"), ("text", "Text", "text")):
        setup = read_label_config(label_config(classes, kind), classes, kind, "p")
        assert setup == LabelSetup(control="label", target="item", data_key=key, object_tag=tag)
    assert read_label_config("<View></View>", classes, "image", "p") is None


@pytest.mark.parametrize("xml,needle", [
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i" choice="multiple">'
     '<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/></Choices></View>', "needs single"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="cat"/>'
     '<Choice value="dog"/></Choices></View>', "classes without a choice ['bird']"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="cat"/><Choice value="dog"/>'
     '<Choice value="bird"/><Choice value="fish"/></Choices></View>', "choices not among the classes ['fish']"),
    ('<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="cat"/><Choice value="dog"/>'
     '<Choice value="bird"/></Choices></View>', "labels an <Text>"),
    ('<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="cat"/></Choices>'
     '<Choices name="d" toName="i"><Choice value="dog"/></Choices></View>', "2 <Choices> controls"),
    ('<View><Image name="i" value="$image"/><Labels name="l" toName="i"><Label value="cat"/></Labels></View>',
     "0 <Choices> controls"),
    ("<View><Choices", "does not parse"),
])
def test_incompatible_label_configs_are_refused_with_the_reason(xml, needle):
    pytest.importorskip("label_studio_sdk")
    with pytest.raises(LabelStudioError, match="does not fit") as exc:
        read_label_config(xml, CLASSES, "image", "Label Studio project 3")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_label_config_with_aliases_and_extra_controls_fits():
    pytest.importorskip("label_studio_sdk")
    xml = ('<View><Image name="pic" value="$img"/><Choices name="kind" toName="pic">'
           '<Choice value="Cat" alias="cat"/><Choice value="dog"/><Choice value="bird"/></Choices>'
           '<TextArea name="notes" toName="pic"/></View>')
    assert read_label_config(xml, CLASSES, "image", "p") == LabelSetup("kind", "pic", "img", "Image")


def ann(i, who, label=None, cancelled=False):
    result = [] if label is None else [{"from_name": "label", "to_name": "item", "type": "choices",
                                        "value": {"choices": [label]}}]
    return {"id": i, "completed_by": who, "was_cancelled": cancelled, "result": result}


@pytest.mark.parametrize("annotations,state,label", [
    ([], "waiting", None),
    ([ann(1, 7, "dog")], "labeled", "dog"),
    ([ann(1, 7, "dog"), ann(2, 8, "cat"), ann(3, 9, "dog")], "labeled", "dog"),   # majority
    ([ann(1, 7, "dog"), ann(2, 8, "cat")], "conflict", None),                    # tie waits
    ([ann(1, 7, cancelled=True)], "skipped", None),
    ([ann(1, 7, cancelled=True), ann(2, 8, "bird")], "labeled", "bird"),          # a skip is no vote
    ([ann(5, 7, "cat"), ann(2, 7, "dog"), ann(3, 8, "cat")], "labeled", "cat"),   # latest per annotator
    ([ann(1, 7, "dog"), ann(4, 7, cancelled=True), ann(2, 8, "cat")], "labeled", "cat"),
])
def test_vote_rule(annotations, state, label):
    got = resolve_task(annotations, SETUP, CLASSES, "task 1")
    assert (got.state, got.label) == (state, label)


@pytest.mark.parametrize("annotations,needle", [
    ([ann(1, 7, "giraffe")], "unknown class 'giraffe'; use a class name (cat, dog, bird)"),
    ([ann(1, 7, "1")], "unknown class '1'"),  # indices are for CSV files only
    ([ann(1, 7)], "submitted without a class"),
    ([{"id": 1, "completed_by": 7, "result": [
        {"from_name": "label", "type": "choices", "value": {"choices": ["cat", "dog"]}}]}], "with 2 classes"),
])
def test_bad_annotations_are_label_errors(annotations, needle):
    with pytest.raises(LabelError, match="project 3 task 9") as exc:
        resolve_task(annotations, SETUP, CLASSES, "Label Studio project 3 task 9")
    assert needle in str(exc.value)


def test_config_options(tmp_path):
    def cfg(**flags):
        return resolve_config(None, flags)[0]

    with pytest.raises(ConfigError, match="needs --ls-url"):
        cfg(oracle="label-studio")
    with pytest.raises(ConfigError, match="--ls-url must look like"):
        cfg(oracle="label-studio", ls_url="localhost:8080", ls_project="1")
    with pytest.raises(ConfigError, match="are for --oracle label-studio"):
        cfg(oracle="files", ls_url="http://localhost:8080")
    with pytest.raises(ConfigError, match="--oracle must be one of simulated, files, label-studio"):
        cfg(oracle="mail")
    ok = cfg(oracle="label-studio", ls_url="https://ls.example.org:8443/", ls_project="My project")
    assert (ok.ls_url, ok.ls_project) == ("https://ls.example.org:8443/", "My project")
    toml = tmp_path / "c.toml"
    toml.write_text('oracle = "label-studio"\nls-url = "http://h:1"\nls-project = 3\n')
    assert resolve_config(toml, {})[0].ls_project == "3"
    assert "ls_token" not in RunConfig().to_dict() and "token" not in " ".join(RunConfig().to_dict())


def test_token_from_the_environment_only(monkeypatch):
    pytest.importorskip("label_studio_sdk")
    from entk_al.run.labelstudio import LabelStudioOracle, token_from_env

    monkeypatch.delenv("ENTK_AL_LS_TOKEN", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="no Label Studio access token: set ENTK_AL_LS_TOKEN"):
        LabelStudioOracle("http://localhost:8080", 1)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-sdk-variable")
    assert token_from_env() == "from-sdk-variable"
    monkeypatch.setenv("ENTK_AL_LS_TOKEN", "ours-first")
    oracle = LabelStudioOracle("http://localhost:8080/", "7")
    assert token_from_env() == "ours-first" and "ours-first" not in repr(oracle) and oracle.url.endswith(":8080")
    with pytest.raises(ConfigError, match="sequential"):
        oracle(np.array([1]))
    with pytest.raises(ConfigError, match="connect"):
        oracle.pull(round=0)


def test_pending_queries_keep_the_strategys_scores_in_its_order(tmp_path):
    """The acquisition scores pushed with the tasks are the strategy's own: for margin sampling
    -(p_(1) - p_(2)) under the round's model, recomputed here from the checkpoint."""
    import torch

    from entk_al.nets.models import predict
    from entk_al.run.loop import ActiveLearningLoop

    cfg = RunConfig(initial=10, query=5, rounds=1, epochs=1, min_steps=5, subset=200, strategy="margin",
                    oracle="files")
    loop = ActiveLearningLoop(cfg, tmp_path / "r")
    loop.run()
    ids = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["pending"]["ids"]
    rows = (tmp_path / "r" / "queries" / "initial.csv").read_text().splitlines()[1:]
    (tmp_path / "a.csv").write_text("id,label\n" + "".join(
        f"{r.split(',')[0]},{int(loop.data.y_train[int(r.split(',')[0])])}\n" for r in rows))
    from entk_al.run.oracle import record_labels

    record_labels(tmp_path / "r", -2, ids, loop.data.classes, tmp_path / "a.csv")
    loop = ActiveLearningLoop(cfg, tmp_path / "r")
    loop.run(resume=True)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    pending = ck["pending"]
    assert pending["round"] == 0 and len(pending["scores"]) == 5
    model = loop.new_model(0)
    model.load_state_dict(ck["model"])
    probs = torch.softmax(predict(model, loop.data.x_train[torch.tensor(pending["ids"])]).double(), dim=1)
    top2 = probs.topk(2, dim=1).values
    np.testing.assert_allclose(pending["scores"], (-(top2[:, 0] - top2[:, 1])).numpy(), rtol=1e-5, atol=1e-7)
    assert pending["scores"] == sorted(pending["scores"], reverse=True)  # best first


def test_lookahead_queries_carry_its_pick_scores(tmp_path):
    """The look-ahead's acquisition scores reach the pending queries, best first, and agree
    with the round's strategy_info (score_max, score_mean)."""
    import torch

    from entk_al.data import load_dataset
    from entk_al.run.loop import ActiveLearningLoop

    cfg = RunConfig(initial=10, query=4, rounds=1, epochs=1, min_steps=5, subset=100, strategy="lookahead",
                    oracle="files")
    data = load_dataset("digits")
    ActiveLearningLoop(cfg, tmp_path / "r", dataset=data).run()
    ids = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["pending"]["ids"]
    from entk_al.run.oracle import record_labels

    (tmp_path / "a.csv").write_text("id,label\n" + "".join(f"{i},{int(data.y_train[i])}\n" for i in ids))
    record_labels(tmp_path / "r", -2, ids, data.classes, tmp_path / "a.csv")
    ActiveLearningLoop(cfg, tmp_path / "r", dataset=data).run(resume=True)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    scores, info = ck["pending"]["scores"], ck["records"][-1]["strategy_info"]
    assert len(scores) == 4 and None not in scores and scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(info["score_max"]) and np.mean(scores) == pytest.approx(info["score_mean"])
