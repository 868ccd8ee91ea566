"""Data files shipped with patseg: class-name lists, prompt templates and open_clip model configs.

Class names are used verbatim (one per line, whole synonym strings), as SAN does; templates are byte-exact copies
of SAN's lists (`san/model/clip_utils/utils.py` in MendelXu/SAN).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from patseg.errors import MissingFileError

RESOURCE_DIR = Path(__file__).parent
CLASSNAME_DIR = RESOURCE_DIR / "classnames"
TEMPLATE_DIR = RESOURCE_DIR / "templates"
CLIP_CONFIG_DIR = RESOURCE_DIR / "clip"


def _read_lines(path: Path) -> tuple[str, ...]:
    return tuple(line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=None)
def load_templates(name: str = "san_vild") -> tuple[str, ...]:
    """Prompt templates of set ``name`` (``san_vild``: 14, ``san_imagenet80``: 80), each with one ``{}``."""
    path = TEMPLATE_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt")))
        raise MissingFileError(f"unknown template set '{name}' (known: {known})")
    return _read_lines(path)


@lru_cache(maxsize=None)
def load_class_names(name: str) -> tuple[str, ...]:
    """Class names of a benchmark in trainId order (``ade20k_150``, ``coco_stuff_171``, ...)."""
    path = CLASSNAME_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CLASSNAME_DIR.glob("*.txt")))
        raise MissingFileError(f"no class-name list '{name}' (known: {known})")
    return tuple(line.strip() for line in _read_lines(path))
