"""sd-scripts sample file names -> (output name, step or epoch, prompt index, time, seed).

The one parser of them: training (which prompt an evaluation image renders), ``rank`` and
``report`` all read names through it.

Every sd-scripts sampler (SD1/2, SDXL, SD3, FLUX, Lumina, HunyuanImage, Anima) names its
images ``{output_name}_{num}_{i:02d}_{YYYYmmddHHMMSS}{_seed}.png`` in ``output_dir/sample/``:
``num`` is ``{steps:06d}`` for step samples or ``e{epoch:06d}`` for epoch-end samples, the
``output_name_`` prefix is absent when ``--output_name`` is not set, ``_seed`` only when
the prompt fixes one (``--d``). Output names may hold underscores and digits, and the
prompt index and step may be wider than their padding, so the name is parsed from the right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# Greedy prefix: the step/index/time fields are the LAST ones that fit, so an output name
# like "char_v2_000100" still parses. The timestamp is exactly 14 digits.
_NAME = re.compile(
    r"^(?:(?P<prefix>.*)_)?(?P<num>e\d{6,}|\d{6,})_(?P<idx>\d{2,})_(?P<ts>\d{14})(?:_(?P<seed>-?\d+))?\.png$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SampleName:
    """One parsed sample file name. Exactly one of ``step`` / ``epoch`` is set."""

    path: Path
    output_name: str | None
    step: int | None
    epoch: int | None
    prompt_index: int
    time: datetime | None
    seed: int | None

    @property
    def key(self) -> tuple[str, int]:
        """The sampling point: ("step", N) or ("epoch", N)."""
        return ("step", self.step) if self.step is not None else ("epoch", self.epoch)  # type: ignore[return-value]


def parse_sample_name(path: str | Path) -> SampleName | None:
    """The parsed name, or None when ``path`` is not named the way sd-scripts names samples."""
    p = Path(path)
    m = _NAME.match(p.name)
    if not m:
        return None
    num = m.group("num")
    try:
        ts = datetime.strptime(m.group("ts"), "%Y%m%d%H%M%S")
    except ValueError:  # 14 digits that are no date: not a sample name
        return None
    is_epoch = num[0] in "eE"
    return SampleName(
        path=p,
        output_name=m.group("prefix"),
        step=None if is_epoch else int(num),
        epoch=int(num[1:]) if is_epoch else None,
        prompt_index=int(m.group("idx")),
        time=ts,
        seed=None if m.group("seed") is None else int(m.group("seed")),
    )


@dataclass
class SampleGroup:
    """The images sd-scripts saved at one sampling point (one step, or one epoch end)."""

    kind: str  # "step" or "epoch"
    number: int
    samples: list[SampleName] = field(default_factory=list)

    @property
    def first_time(self) -> datetime | None:
        times = [s.time for s in self.samples if s.time is not None]
        return min(times) if times else None

    @property
    def label(self) -> str:
        return f"step {self.number}" if self.kind == "step" else f"epoch {self.number}"

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in sorted(self.samples, key=lambda s: (s.prompt_index, s.path.name))]


def group_samples(folder: str | Path, output_name: str | None = None) -> tuple[list[SampleGroup], list[Path]]:
    """Group ``folder``'s sample PNGs by sampling point, in the order they were made.

    Returns (groups, files that are not sd-scripts sample names). With ``output_name``,
    only that run's samples count (several runs may share an output folder).
    Chronological order comes from the timestamps in the names, so epoch-end groups
    fall in place between step groups even when their step is unknown.
    """
    groups: dict[tuple[str, int], SampleGroup] = {}
    other: list[Path] = []
    for p in sorted(Path(folder).iterdir()):
        if not p.is_file():
            continue
        s = parse_sample_name(p)
        if s is None or (output_name is not None and (s.output_name or None) != (output_name or None)):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                other.append(p)
            continue
        kind, num = s.key
        groups.setdefault((kind, num), SampleGroup(kind, num)).samples.append(s)
    ordered = sorted(groups.values(), key=lambda g: (g.first_time or datetime.min, g.kind != "step", g.number))
    return ordered, other
