"""What entk-al writes to and reads from a Label Studio project, without talking to a server.

* the label config entk-al creates for a new project (:func:`label_config`) and the check of
  an existing one (:func:`read_label_config`): one single-choice ``<Choices>`` whose choices
  are exactly the dataset's class names, on an ``<Image>`` (image pools) or ``<Text>``
  (vectors, tables);
* a task per queried pool item (:func:`task_payload`): the item as an image data URI (PNG)
  or as text, entk-al's bookkeeping and the acquisition value as task data, the model's
  prediction as a pre-annotation;
* the rule that turns a task's annotations into one label (:func:`resolve_task`).

The Label Studio formats are those of its REST API (label config XML, task JSON with
``data`` and ``predictions``, annotation ``result`` items of type ``choices``); the config is
parsed with ``label_studio_sdk.label_interface`` (the ``labelstudio`` extra).
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import LabelError, LabelStudioError
from .oracle import unknown_class

#: name of the ``<Choices>`` control entk-al creates (annotation results carry it as ``from_name``).
CONTROL_NAME = "label"
#: images narrower than this (pixels, shorter side) are enlarged by an integer factor, nearest
#: neighbour, so that 8x8 digits or 28x28 MNIST stay crisp in the annotator's browser.
IMAGE_MIN_SIDE_PX = 128
#: at most this many feature values are written into a text task.
TEXT_MAX_VALUES = 512
#: object tags a text task may be shown with, by the kind of pool (:func:`data_kind`).
OBJECT_TAGS = {"image": ("Image",), "text": ("Text", "HyperText")}


def data_kind(input_shape: Sequence[int]) -> str:
    """``"image"`` for (C, H, W) inputs with 1 or 3 channels, else ``"text"`` (vectors, tables).

    Args:
        input_shape: the shape of one pool input, without the batch axis.
    """
    shape = tuple(int(s) for s in input_shape)
    return "image" if len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 2 else "text"


def label_config(classes: Sequence[str], kind: str) -> str:
    """The label config entk-al gives a new project: the item and one required single choice.

    Args:
        classes: the dataset's class names (the choices, in class-index order).
        kind: ``"image"`` or ``"text"`` (:func:`data_kind`).

    Returns:
        the label config XML (class names escaped).
    """
    obj = ('<Image name="item" value="$image" zoom="true"/>' if kind == "image"
           else '<Text name="item" value="$text"/>')
    choices = "".join(f"<Choice value={quoteattr(str(c))}/>" for c in classes)
    return (f'<View>{obj}<Choices name="{CONTROL_NAME}" toName="item" choice="single" required="true" '
            f'showInLine="true">{choices}</Choices></View>')


@dataclass(frozen=True)
class LabelSetup:
    """Where the class goes in a project's label config.

    Attributes:
        control: the ``<Choices>`` control's name (``from_name`` of annotation results).
        target: the object tag it labels (``to_name``).
        data_key: the task data key that object shows (``$image`` -> ``image``).
        object_tag: the object tag's type (``Image``, ``Text``, ...).
    """

    control: str
    target: str
    data_key: str
    object_tag: str


def read_label_config(xml: str, classes: Sequence[str], kind: str | None, where: str) -> LabelSetup | None:
    """Check a project's label config against the dataset; None when it has no control tag yet.

    A config fits when it has exactly one ``<Choices>`` control, single choice, whose choices
    (aliases where given: what annotations store) are exactly the class names, and which
    labels an object tag showing a task data field (``<Image>`` for image pools, ``<Text>`` or
    ``<HyperText>`` for vectors). Other controls (a comment box) are allowed and ignored.

    Args:
        xml: the project's label config.
        classes: the dataset's class names.
        kind: ``"image"`` or ``"text"``; None accepts any object tag (reading labels back only).
        where: the project, named in errors (``Label Studio project 3 ('digits')``).

    Raises:
        LabelStudioError: the config does not parse or does not fit; the message says why.
    """
    from label_studio_sdk.label_interface import LabelInterface

    def unfit(reason: str) -> LabelStudioError:
        return LabelStudioError(f"{where} has a label config that does not fit this run: {reason}; give a new "
                                f"project (entk-al then writes the config) or edit its labeling setup to one "
                                f"single <Choices> with the classes")

    try:
        li = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several XML and schema error types
        raise unfit(f"it does not parse ({type(exc).__name__})") from None
    controls = list(li.controls or [])
    if not controls:
        return None
    choices = [c for c in controls if c.tag == "Choices"]
    if len(choices) != 1:
        raise unfit(f"it has {len(choices)} <Choices> controls, entk-al needs exactly one")
    ctl = choices[0]
    if str(ctl.attr.get("choice", "single")).lower() != "single":
        raise unfit(f"<Choices name={ctl.name!r}> allows {ctl.attr.get('choice')!r} choices, entk-al needs single")
    have, want = list(ctl.labels), [str(c) for c in classes]
    if sorted(have) != sorted(want) or len(set(have)) != len(have):
        extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        parts = ([f"choices not among the classes {extra[:8]}"] if extra else []) + (
            [f"classes without a choice {missing[:8]}"] if missing else []) + (
            ["a choice given twice"] if len(set(have)) != len(have) else [])
        raise unfit(", ".join(parts))
    targets = [li.get_object(name) for name in (ctl.to_name or [])]
    if len(targets) != 1 or targets[0] is None:
        raise unfit(f"<Choices name={ctl.name!r}> must label one object tag, it names {ctl.to_name}")
    obj = targets[0]
    if not obj.value_is_variable:
        raise unfit(f"<{obj.tag} name={obj.name!r}> shows {obj.value!r}, not a task field like $image")
    if kind is not None and obj.tag not in OBJECT_TAGS[kind]:
        raise unfit(f"it labels an <{obj.tag}>, but this pool holds {'images' if kind == 'image' else 'vectors'} "
                    f"(shown as <{OBJECT_TAGS[kind][0]}>)")
    return LabelSetup(control=ctl.name, target=obj.name, data_key=obj.value_name, object_tag=obj.tag)


def image_data_uri(x: np.ndarray) -> str:
    """A (C, H, W) image, C in {1, 3}, as a PNG ``data:`` URI for the annotator's browser.

    Pool inputs are normalized floats, so each image is min-max scaled to 0..255 (its
    contrast, not its absolute values, is what a person judges; non-finite pixels become
    black) and enlarged by an integer factor to at least :data:`IMAGE_MIN_SIDE_PX` pixels.

    Args:
        x: (C, H, W) array, any real dtype.
    """
    from PIL import Image

    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    u8 = np.zeros(x.shape, np.uint8) if hi <= lo else np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)
    img = Image.fromarray(u8[0] if u8.shape[0] == 1 else np.moveaxis(u8, 0, -1))
    scale = max(1, math.ceil(IMAGE_MIN_SIDE_PX / min(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def text_of(x: np.ndarray) -> str:
    """A pool input as text: its feature values, 4 significant digits, at most :data:`TEXT_MAX_VALUES`.

    Args:
        x: the input, any shape (flattened), any real dtype.
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    shown = ", ".join(f"{v:.4g}" for v in flat[:TEXT_MAX_VALUES])
    more = f", ... ({flat.size} values)" if flat.size > TEXT_MAX_VALUES else ""
    return f"[{shown}{more}]"


def task_payload(setup: LabelSetup, pool_id: int, x: np.ndarray, *, tag: str, round_idx: int, rank: int,
                 score: float | None, source: str | None, probs: np.ndarray | None,
                 classes: Sequence[str]) -> dict[str, Any]:
    """One Label Studio task (import JSON) for one queried pool item.

    Task data: the item under ``setup.data_key`` (:func:`image_data_uri` for ``<Image>``,
    :func:`text_of` otherwise), ``entk_al_id`` (pool id), ``entk_al_round`` (-2: the initial
    set), ``entk_al_tag`` (the run), ``acquisition_rank`` (1 = the strategy's first pick) and
    ``acquisition_score`` (the strategy's score, higher = more informative; null when it has
    none), ``source``. With ``probs``, the model's most probable class is a pre-annotation
    whose ``score`` is that probability.

    Args:
        setup: the project's label setup (:func:`read_label_config`).
        pool_id: the global pool id.
        x: the pool input, (C, H, W) or (D,).
        tag: the run's tag (tasks of one run and round are found by it).
        round_idx: the round that queried the item.
        rank: 1-based position in the strategy's order.
        score: the strategy's acquisition score, or None.
        source: where the item came from (file path, original index), or None.
        probs: (O,) class probabilities of the current model, or None (initial set).
        classes: the dataset's class names.
    """
    item = image_data_uri(x) if setup.object_tag == "Image" else text_of(x)
    finite = score is not None and math.isfinite(float(score))
    data = {setup.data_key: item, "entk_al_id": int(pool_id), "entk_al_round": int(round_idx),
            "entk_al_tag": tag, "acquisition_rank": int(rank),
            "acquisition_score": float(score) if finite else None, "source": source or str(pool_id)}
    task: dict[str, Any] = {"data": data}
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        best = int(p.argmax())
        task["predictions"] = [{
            "model_version": f"entk-al {tag}", "score": float(p[best]),
            "result": [{"from_name": setup.control, "to_name": setup.target, "type": "choices",
                        "value": {"choices": [str(classes[best])]}, "score": float(p[best])}]}]
    return task


@dataclass(frozen=True)
class TaskAnswer:
    """What a task's annotations say (:func:`resolve_task`).

    Attributes:
        state: ``labeled``, ``waiting`` (no annotation yet), ``skipped`` (every annotator
            skipped it) or ``conflict`` (a tie between annotators).
        label: the winning class name (``labeled`` only).
        votes: class name -> number of annotators who chose it.
    """

    state: str
    label: str | None
    votes: dict[str, int]


def _choice(annotation: dict, setup: LabelSetup, where: str) -> str:
    picked = [c for r in annotation.get("result") or [] if r.get("from_name") == setup.control
              and r.get("type") == "choices" for c in (r.get("value") or {}).get("choices") or []]
    if len(picked) != 1:
        who = annotation.get("completed_by")
        what = "without a class" if not picked else f"with {len(picked)} classes {picked[:5]}"
        raise LabelError(f"{where}: annotation {annotation.get('id')} (user {who}) was submitted {what}; "
                         f"fix or delete it in Label Studio")
    return str(picked[0])


def resolve_task(annotations: Sequence[dict], setup: LabelSetup, classes: Sequence[str], where: str) -> TaskAnswer:
    """One label from a task's annotations, by majority of annotators.

    The rule: each annotator's latest annotation counts (highest annotation id); a skipped
    (cancelled) one is no vote. The class chosen by most annotators wins; a tie is a
    ``conflict`` and waits for another annotation; a task nobody has annotated is
    ``waiting``, one whose every annotator skipped it ``skipped``.

    Args:
        annotations: the task's annotations as the REST API returns them (``id``,
            ``completed_by``, ``was_cancelled``, ``result``).
        setup: the project's label setup.
        classes: the dataset's class names; every vote must name one (a choice of the config).
        where: the task, named in errors (``Label Studio project 3 task 45``).

    Raises:
        LabelError: an annotation without exactly one class, or with an unknown class.
    """
    latest: dict[Any, dict] = {}
    for ann in sorted(annotations, key=lambda a: int(a.get("id") or 0)):
        latest[ann.get("completed_by")] = ann
    votes: Counter[str] = Counter()
    skipped = 0
    for ann in latest.values():
        if ann.get("was_cancelled"):
            skipped += 1
            continue
        raw = _choice(ann, setup, where)
        if raw not in classes:  # a choice names a class; indices are a CSV convenience only
            raise LabelError(f"{where}: annotation {ann.get('id')}: {unknown_class(raw, classes, indices=False)}")
        votes[raw] += 1
    if not votes:
        return TaskAnswer("skipped" if skipped else "waiting", None, {})
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return TaskAnswer("conflict", None, dict(votes))
    return TaskAnswer("labeled", ranked[0][0], dict(votes))
