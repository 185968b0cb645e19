"""The public entry point: a reference (folder, kohya dataset, or ref.json) + samples -> report (example: kohya_ext)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import BackendSpec
from .comparison import compare
from .datasets import ImageGroup, resolve_image_groups
from .images import list_images
from .measure import ImageMeasurement, measure_arrays, measure_files
from .ratios import ExclusionRules
from .reference import ReferenceStats, build_reference
from .report import ConsistencyReport


def is_reference_file(path: str | Path) -> bool:
    """A ``.json`` file given where a reference is asked for is read as a ref.json, never as an
    image: a damaged or foreign one is refused by ReferenceStats.load with one line saying why."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() == ".json"


def backend_for_reference(source: str | Path, backend: str | BackendSpec) -> BackendSpec:
    """With ``auto`` and a ref.json, use the backend the reference was made with."""
    spec = backend if isinstance(backend, BackendSpec) else BackendSpec(backend)
    if spec.requested == "auto" and is_reference_file(source):
        made_with = ReferenceStats.load(source).backend_name
        spec = BackendSpec(made_with, device=spec.device, threads=spec.threads, **spec.hrnet_options)
    return spec


def load_references(
    source: str | Path,
    backend: BackendSpec,
    rules: ExclusionRules = ExclusionRules(),
    by_class: bool = False,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> list[ReferenceStats]:
    """References from a ref.json, a folder, a kohya train_data_dir or dataset config.

    ``by_class`` returns one reference per class token (several characters in one
    dataset); otherwise all training subsets form one reference.
    """
    if is_reference_file(source):
        ref = ReferenceStats.load(source)
        ref.check_compatible(backend.identity(), rules.as_dict())
        return [ref]
    groups = resolve_image_groups(source)
    if not by_class and len(groups) > 1:
        merged = ImageGroup(Path(source).stem if Path(source).is_file() else Path(source).name)
        for g in groups:
            merged.paths.extend(g.paths)
            merged.sources.extend(g.sources)
        groups = [merged]
    identity = backend.identity()
    return [
        build_reference(
            g.paths, backend.create, identity, rules, name=g.name, sources=g.sources,
            use_cache=use_cache, cache_dir=cache_dir, progress=progress,
        )
        for g in groups
    ]


class Scorer:
    """Scores samples against one reference with one backend."""

    def __init__(
        self,
        reference: ReferenceStats | str | Path,
        backend: str | BackendSpec = "auto",
        rules: ExclusionRules = ExclusionRules(),
        use_cache: bool = True,
        cache_dir: Path | None = None,
        progress: bool = True,
    ):
        self.rules = rules
        self.progress = progress
        if isinstance(reference, ReferenceStats):
            self.backend = backend if isinstance(backend, BackendSpec) else BackendSpec(
                reference.backend_name if backend == "auto" else backend
            )
            reference.check_compatible(self.backend.identity(), rules.as_dict())
            self.reference = reference
        else:
            self.backend = backend_for_reference(reference, backend)
            refs = load_references(reference, self.backend, rules, use_cache=use_cache, cache_dir=cache_dir, progress=progress)
            self.reference = refs[0]
        self.reference.check_usable()
        self.use_cache = use_cache
        self.cache_dir = cache_dir

    def score_measurements(self, samples: list[ImageMeasurement]) -> ConsistencyReport:
        return compare(self.reference, samples, self.backend.identity())

    def measure_images(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[ImageMeasurement]:
        return measure_arrays(self.backend.create(), list(images), names, self.rules)

    def score_images(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> ConsistencyReport:
        """Score in-memory RGB uint8 images (e.g. samples rendered during training)."""
        return self.score_measurements(self.measure_images(images, names))

    def score_paths(self, paths: Sequence[str | Path]) -> ConsistencyReport:
        """Score image files; a folder expands to the images inside it."""
        files: list[Path] = []
        for p in paths:
            files.extend(list_images(p))
        from .cache import MeasurementCache

        cache = MeasurementCache(self.backend.identity(), self.rules.as_dict(), self.cache_dir) if self.use_cache else None
        ms = measure_files(files, self.backend.create, self.backend.name, cache=cache, rules=self.rules, progress=self.progress)
        return self.score_measurements(ms)
