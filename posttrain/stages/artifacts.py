"""Where things live inside an artifact directory, so stages agree without knowing each other.

An input reference resolves to a stage's directory (or an external path). A model stage writes
`model/`; a data stage writes named JSONL files. These helpers accept either the stage directory or
the thing itself, so a user can point an input at their own model directory or data file.
"""
from __future__ import annotations

from pathlib import Path

MODEL_DIR = "model"


def model_dir(path: Path) -> Path:
    """The HF model directory inside a stage artifact, or `path` itself if it is one."""
    path = Path(path)
    if (path / MODEL_DIR / "config.json").exists():
        return path / MODEL_DIR
    if (path / "config.json").exists():
        return path
    raise FileNotFoundError(f"{path}: no HF model here (expected config.json, or {MODEL_DIR}/config.json)")


def data_file(path: Path, name: str) -> Path:
    """File `name` inside a stage artifact, or `path` itself if it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = path / name
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"{path}: no {name} here")


def find_data_file(path: Path, names: list[str]) -> Path:
    """The first of `names` inside a data artifact, or `path` itself if it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    for name in names:
        if (path / name).exists():
            return path / name
    raise FileNotFoundError(f"{path}: none of {', '.join(names)} found")


def drop_checkpoints(out_dir: Path) -> None:
    """Remove a finished training stage's resume checkpoints: the final model is saved, and optimizer
    states of a real model are several times its size."""
    import shutil

    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)
