"""The cache root and the machine-independent paths that result files record."""

from pathlib import Path

from patseg.mini.clip_pretrain import SHIPPED_DIR, WEIGHTS_FILE, cache_dir_for
from patseg.mini.world import WorldConfig, world_hash
from patseg.paths import cache_dir, portable_path


def test_cache_dir_reads_the_variable_and_expands_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PATSEG_CACHE", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "patseg"
    monkeypatch.setenv("PATSEG_CACHE", "~/elsewhere")
    assert cache_dir() == tmp_path / "home" / "elsewhere"
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert cache_dir_for(WorldConfig()) == tmp_path / "cache" / "mini_clip" / world_hash(WorldConfig())


def test_portable_path_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    assert portable_path(SHIPPED_DIR / WEIGHTS_FILE) == "patseg/resources/mini_clip/mini_clip.safetensors"
    cached = cache_dir_for(WorldConfig()) / WEIGHTS_FILE
    assert portable_path(cached) == f"$PATSEG_CACHE/mini_clip/{world_hash(WorldConfig())}/mini_clip.safetensors"
    assert portable_path(tmp_path / "cache") == "$PATSEG_CACHE"
    assert portable_path(work / "outputs" / "results.json") == "outputs/results.json"
    assert portable_path("outputs/results.json") == "outputs/results.json"
    assert portable_path(tmp_path / "other" / "w.safetensors") == "w.safetensors"  # outside: the name alone


def test_the_cache_wins_over_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATSEG_CACHE", str(tmp_path / ".cache"))
    assert portable_path(Path(".cache") / "text" / "x.safetensors") == "$PATSEG_CACHE/text/x.safetensors"
