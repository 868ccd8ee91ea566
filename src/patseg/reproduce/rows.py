"""The rows of the paper's Tables I and II: one training config each, ``configs/paper/<table>/<row>.yaml``.

A row's identity (table, id, position, label, Table II group, the paper's numbers) lives in the config's ``paper``
section (:class:`patseg.engine.train_config.PaperRow`); the file name is the row id. Everything else in the file
is an ordinary training config, so ``patseg train configs/paper/table2/no_vmf.yaml`` trains one run of that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from patseg.config import ModelConfig, load_preset
from patseg.engine.train_config import PAPER_TABLES, PaperRow, TrainConfig, load_train_config, model_config
from patseg.errors import ConfigError, MissingFileError, UsageError

TABLES = PAPER_TABLES
# The paper's zero-shot columns, in its order.
BENCHMARKS: tuple[str, ...] = ("pcontext_59", "ade20k_150", "pcontext_459", "ade20k_847")
TITLES = {
    "table1": "Table I: zero-shot mIoU (%) of SAN and PAT (ViT-B/16), trained on COCO-Stuff-171",
    "table2": "Table II: ablations of PAT EVA-CLIP ViT-B/16, zero-shot mIoU (%) and rFID",
}
CONFIGS_SUBDIR = Path("configs") / "paper"

# Which weights option a row needs, by the open_clip model its preset names.
CLIP_KINDS = {"ViT-B-16": "clip", "EVA02-B-16": "evaclip"}
CLIP_OPTIONS = {"clip": "--clip-weights", "evaclip": "--evaclip-weights"}


@dataclass(frozen=True)
class Row:
    """One row of a table: its config file, the loaded training config and the paper's record."""

    config: Path
    cfg: TrainConfig
    paper: PaperRow

    @property
    def id(self) -> str:
        return self.paper.row

    @property
    def table(self) -> str:
        return self.paper.table

    @property
    def name(self) -> str:
        """``table2/no_vmf``: how progress messages and errors name the row."""
        return f"{self.table}/{self.id}"

    @property
    def model(self) -> ModelConfig:
        """The full-size model the row trains (preset + the config's overrides)."""
        return model_config(self.cfg)

    @property
    def clip_kind(self) -> str:
        """``clip`` or ``evaclip``: which CLIP weights file the row needs."""
        name = self.model.clip.model_name
        if name not in CLIP_KINDS:
            known = ", ".join(CLIP_KINDS)
            raise ConfigError(f"{self.config}: no weights option for the CLIP '{name}' (known: {known})")
        return CLIP_KINDS[name]


def default_configs_dir() -> Path:
    """``configs/paper`` of the working directory, else of the source tree patseg runs from (an editable install)."""
    here = Path.cwd() / CONFIGS_SUBDIR
    if here.is_dir():
        return CONFIGS_SUBDIR
    source_tree = Path(__file__).resolve().parents[3] / CONFIGS_SUBDIR
    return source_tree if source_tree.is_dir() else CONFIGS_SUBDIR


def row_ids(configs: Path, table: str) -> list[str]:
    """Ids of the rows of ``table`` (config file names), sorted; MissingFileError without the folder."""
    folder = configs / table
    if not folder.is_dir():
        raise MissingFileError(
            f"no row configs for {table} in {folder}: run from the repository root (it holds configs/paper) "
            f"or pass --configs DIR"
        )
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_rows(configs: Path, table: str, ids: Sequence[str] | None = None) -> list[Row]:
    """The rows ``ids`` of ``table`` (default: all), loaded and validated, in the paper's order.

    Only the selected configs are loaded, so one row that does not build yet does not block the others.

    Raises:
        UsageError: an id that is not a row of ``table`` (the message lists the rows).
        ConfigError: a config without its ``paper`` section, naming another row or table, or two rows at one position.
    """
    known = row_ids(configs, table)
    wanted = list(dict.fromkeys(ids)) if ids else known
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise UsageError(f"--rows: '{unknown[0]}' is not a row of {table} (rows: {', '.join(known)})")
    rows = [_load_row(configs / table / f"{row_id}.yaml", table) for row_id in wanted]
    positions = [r.paper.position for r in rows]
    duplicate = next((p for p in positions if positions.count(p) > 1), None)
    if duplicate is not None:
        clash = [str(r.config) for r in rows if r.paper.position == duplicate]
        raise ConfigError(f"config key 'paper.position' {duplicate} is given by two rows: {', '.join(clash)}")
    return sorted(rows, key=lambda r: r.paper.position)


def _load_row(path: Path, table: str) -> Row:
    cfg = load_train_config(path)
    paper = cfg.paper
    if paper is None:
        raise ConfigError(f"{path}: no 'paper' section naming the row it reproduces")
    if paper.table != table or paper.row != path.stem:
        raise ConfigError(
            f"{path}: its 'paper' section names {paper.table}/{paper.row}; a file in {path.parent} must name "
            f"{table}/{path.stem}"
        )
    return Row(path, cfg, paper)


def tiny_preset(preset: str) -> str:
    """The tiny preset standing in for ``preset`` in ``--tiny`` mode: ``pat_tiny`` for PAT, ``san_tiny`` for SAN."""
    return "pat_tiny" if load_preset(preset).is_pat else "san_tiny"
