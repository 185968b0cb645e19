"""The four ComfyUI nodes of category "kohya-ext" (ComfyUI's V3 node API: comfy_api.latest, io.ComfyNode,
comfy_entrypoint); their inputs and outputs are the schemas below, their work is kohya_ext.comfy.core, and a
reference path is confined to the allowed folders (kohya_ext.comfy.folders).

Errors are kohya-ext's one-line messages, raised as node errors (ComfyUI shows the
message on the node and carries on serving). Measuring reports progress on the
node's progress bar and stops at ComfyUI's cancel button.
"""

from __future__ import annotations

import sys

from comfy_api.latest import ComfyExtension, io, ui

from ..backends import BACKEND_NAMES
from ..errors import KohyaExtError
from ..i18n import LANGUAGES
from ..image_score import DEFAULT_THRESHOLD
from . import core, folders

try:
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:  # pragma: no cover - older layouts
    from comfy_execution.graph import ExecutionBlocker

CATEGORY = "kohya-ext"
Reference = io.Custom("CHARACTER_REFERENCE")
EMPTY_SIDE = ("block", "empty batch")


def _progress():
    """A core.Progress that drives this node's progress bar (no-op outside a ComfyUI run)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:  # pragma: no cover
        return core._noop
    if get_executing_context() is None:
        return core._noop
    from comfy_api.latest import ComfyAPISync

    api = ComfyAPISync()

    def report(done: int, total: int) -> None:
        mm = sys.modules.get("comfy.model_management")
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()  # the Cancel button
        api.execution.set_progress(value=float(done), max_value=float(max(total, 1)))

    return report


# models/kohya_ext_references under folder_paths, as node packs register model folders: after the folders
# extra_model_paths.yaml gave that name (ComfyUI reads the yaml before it imports custom nodes)
folders.register_folder()


def _backend_inputs() -> list:
    return [
        io.Combo.Input("backend", options=list(BACKEND_NAMES), default="auto",
                       tooltip="auto: hrnet when its weights are available locally, else nvxs (CPU, Linux x86-64, no weights). "
                               "A ref.json is always measured with its own backend."),
        io.String.Input("device", default="auto", tooltip="hrnet device: auto, cpu, cuda or cuda:N (nvxs runs on the CPU)"),
        io.Combo.Input("face_detector", options=["yolov3", "faster-rcnn"], default="yolov3", optional=True,
                       tooltip="hrnet face detector"),
        io.String.Input("landmark_weights", default="", optional=True,
                        tooltip="HRNetV2 weights file (empty: $KOHYA_EXT_HRNET_WEIGHTS, $KOHYA_EXT_WEIGHTS_DIR or the Hugging Face cache)"),
        io.String.Input("detector_weights", default="", optional=True,
                        tooltip="face detector weights file (empty: $KOHYA_EXT_YOLOV3_WEIGHTS / ..._FASTER_RCNN_WEIGHTS, the weights dir or the Hub cache)"),
    ]


def _spec(backend, device, face_detector=None, landmark_weights="", detector_weights=""):
    fd = face_detector if (backend != "nvxs" and face_detector and face_detector != "yolov3") else None
    return core.backend_spec(backend, device or "auto", fd, landmark_weights or None, detector_weights or None)


def _one(values, name: str):
    """The single value of a widget input of an is_input_list node (ComfyUI sends every input as a list)."""
    if isinstance(values, (list, tuple)):
        if not values:
            raise KohyaExtError(f"no {name} given")
        return values[0]
    return values


def _check_device(device: str) -> bool | str:
    d = (device or "auto").strip()
    if d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit()):
        return True
    return f"unknown device {d!r}: use auto, cpu, cuda or cuda:N"


class CharacterReference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KohyaExtCharacterReference",
            display_name="Character reference (kohya-ext)",
            category=CATEGORY,
            description="The character's reference proportions, from its training images: an image folder, a kohya "
                        "train_data_dir, a kohya dataset config .toml or a ref.json written by `kohya-ext reference`. "
                        "Measured once (kohya-ext's measurement cache) and kept while the files are unchanged.",
            inputs=[
                io.String.Input("path", default="", tooltip="folder, dataset config .toml or ref.json, relative to ComfyUI's "
                                                            f"input folder, models/{folders.FOLDER_NAME} or a folder in "
                                                            f"${folders.ALLOWED_DIRS_ENV} (e.g. my_char/train; "
                                                            "docs/comfyui.md, Folder rules)"),
                *_backend_inputs(),
            ],
            outputs=[Reference.Output(display_name="reference"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, path, device="auto") -> bool | str:
        if path is None:  # linked from another node: checked when it runs
            return True
        try:
            core.resolve_source(path, folders.allowed_roots())
        except KohyaExtError as e:
            return str(e)
        return _check_device(device) if device is not None else True

    @classmethod
    def fingerprint_inputs(cls, path, backend, device, face_detector="yolov3", landmark_weights="", detector_weights=""):
        roots = folders.allowed_roots()
        try:
            p = core.resolve_source(path, roots)
        except KohyaExtError as e:
            return f"error: {e}"
        return "|".join([str(p), backend, device, str(face_detector), str(landmark_weights), str(detector_weights),
                         core.source_fingerprint(p, roots)])

    @classmethod
    def execute(cls, path, backend, device, face_detector="yolov3", landmark_weights="", detector_weights="") -> io.NodeOutput:
        roots = folders.allowed_roots()
        src = core.resolve_source(path, roots)
        ref = core.reference_from_path(src, _spec(backend, device, face_detector, landmark_weights, detector_weights),
                                       progress=_progress(), roots=roots)
        text = ref.describe()
        return io.NodeOutput(ref, text, ui=ui.PreviewText(text))


class CharacterReferenceFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KohyaExtCharacterReferenceFromImages",
            display_name="Character reference from images (kohya-ext)",
            category=CATEGORY,
            description="The character's reference proportions measured from an IMAGE batch, or a list of batches "
                        "(e.g. approved generations, or training images from Load Image Dataset from Folder).",
            is_input_list=True,
            inputs=[
                io.Image.Input("images"),
                io.String.Input("name", default="reference", tooltip="reference name shown in reports"),
                *_backend_inputs(),
            ],
            outputs=[Reference.Output(display_name="reference"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, device=("auto",)) -> bool | str:
        return _check_device(_one(device, "device")) if device is not None else True

    @classmethod
    def execute(cls, images, name, backend, device, face_detector=("yolov3",), landmark_weights=("",), detector_weights=("",)) -> io.NodeOutput:
        # is_input_list: every input arrives as a list (the images as one or more batches)
        o = {k: _one(v, k) for k, v in dict(name=name, backend=backend, device=device, face_detector=face_detector,
                                             landmark_weights=landmark_weights, detector_weights=detector_weights).items()}
        ref = core.reference_from_images(images, _spec(o["backend"], o["device"], o["face_detector"], o["landmark_weights"],
                                                       o["detector_weights"]), name=o["name"], progress=_progress())
        text = ref.describe()
        return io.NodeOutput(ref, text, ui=ui.PreviewText(text))


class CharacterConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KohyaExtCharacterConsistency",
            display_name="Character consistency (kohya-ext)",
            category=CATEGORY,
            description="How well a batch keeps the character's facial proportions and colours: the set score "
                        "(0-1, higher is better, the number `kohya-ext score` gives), the per-ratio report, "
                        "per-image scores and the faces and landmarks drawn. A list of batches is scored as one set.",
            is_input_list=True,
            inputs=[
                io.Image.Input("images"),
                Reference.Input("reference"),
                io.Combo.Input("language", options=list(LANGUAGES), default="en", tooltip="report language: en or ko"),
                io.Boolean.Input("draw_overlays", default=True, optional=True,
                                 tooltip="draw face boxes and landmarks (off: the overlays output is the input batch)"),
            ],
            outputs=[
                io.Float.Output(display_name="score"),
                io.String.Output(display_name="report"),
                io.String.Output(display_name="per_image", tooltip="JSON list: per image score, version, status, reason, z per ratio"),
                io.Image.Output(display_name="overlays", is_output_list=True,
                                tooltip="one overlay batch per input batch (a plain batch in, a plain batch out)"),
            ],
        )

    @classmethod
    def execute(cls, images, reference, language, draw_overlays=(True,)) -> io.NodeOutput:
        # is_input_list: every input arrives as a list (the images as one or more batches)
        reference, language, draw = _one(reference, "reference"), _one(language, "language"), bool(_one(draw_overlays, "draw_overlays"))
        res = core.consistency(reference, images, lang=language, overlays=draw, progress=_progress())
        overlays = res.overlays if res.overlays is not None else core.as_batches(images)
        summary = {"score": res.score, "score_version": res.report.score_version,
                   "image_scores": [s.score for s in res.scores], "statuses": [s.status for s in res.scores]}
        return io.NodeOutput(res.score, res.text, res.per_image_json(), overlays,
                             ui={"text": [res.text], "kohya_ext": [summary]})


class ConsistencyGate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KohyaExtConsistencyGate",
            display_name="Consistency gate (kohya-ext)",
            category=CATEGORY,
            description="Splits a batch by per-image consistency score: images at or above the threshold pass, "
                        "the others (and images without a usable face) fail. An empty side blocks the nodes it "
                        "feeds (they are skipped, the workflow goes on), or is an empty batch if chosen. "
                        "A list of batches is gated as one set (indices count over all of them, in order).",
            is_input_list=True,
            inputs=[
                io.Image.Input("images"),
                Reference.Input("reference"),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="per-image score needed to pass (kohya_ext.image_score; docs/comfyui.md)"),
                io.Combo.Input("empty_side", options=list(EMPTY_SIDE), default="block", optional=True,
                               tooltip="block: nodes fed by an empty side are skipped; empty batch: they get a batch of 0 images"),
                io.Boolean.Input("fail_near_copies", default=False, optional=True,
                                 tooltip="also fail images that are near-copies of a reference image"),
            ],
            outputs=[
                io.Image.Output(display_name="passed", is_output_list=True,
                                tooltip="the passing images: one batch per input batch that has any"),
                io.Image.Output(display_name="failed", is_output_list=True,
                                tooltip="the failing images: one batch per input batch that has any"),
                io.String.Output(display_name="passed_indices", tooltip="comma-separated batch indices"),
                io.String.Output(display_name="failed_indices", tooltip="comma-separated batch indices"),
                io.String.Output(display_name="verdicts", tooltip="JSON list: per image passed, score, reason"),
                io.Int.Output(display_name="passed_count"),
                io.Int.Output(display_name="failed_count"),
            ],
        )

    @classmethod
    def execute(cls, images, reference, threshold, empty_side=("block",), fail_near_copies=(False,)) -> io.NodeOutput:
        import json

        # is_input_list: every input arrives as a list (the images as one or more batches)
        reference, threshold = _one(reference, "reference"), float(_one(threshold, "threshold"))
        block = _one(empty_side, "empty_side") != "empty batch"
        batches = core.as_batches(images)
        res = core.gate(reference, batches, threshold, fail_near_copies=bool(_one(fail_near_copies, "fail_near_copies")),
                        progress=_progress())

        def side(idx):
            if not idx:
                if block:
                    return ExecutionBlocker(None)  # the nodes this side feeds are skipped, silently
                like = batches[0] if batches else None
                return [like[:0] if like is not None else core.arrays_to_tensor([])]
            return core.split_batches(batches, idx)

        verdicts = res.verdicts()
        summary = {"passed": res.passed, "failed": res.failed, "threshold": res.threshold,
                   "image_scores": [s.score for s in res.scores]}
        return io.NodeOutput(
            side(res.passed), side(res.failed),
            ",".join(map(str, res.passed)), ",".join(map(str, res.failed)),
            json.dumps(verdicts, ensure_ascii=False), len(res.passed), len(res.failed),
            ui={"text": [f"passed {len(res.passed)}: [{', '.join(map(str, res.passed))}]; "
                         f"failed {len(res.failed)}: [{', '.join(map(str, res.failed))}] (threshold {res.threshold:.2f})"],
                "kohya_ext": [summary]},
        )


NODES = [CharacterReference, CharacterReferenceFromImages, CharacterConsistency, ConsistencyGate]


class KohyaExtExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return KohyaExtExtension()
