"""Helpers shared by the core.config unit tests (test_config_*.py): the repository's configs
directory, writing a TOML file, loading one with an empty environment, and the message of the
ConfigError a file raises."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.config import FarmConfig, load_config
from core.errors import ConfigError

__all__ = ["REPO_CONFIGS", "error_of", "load", "write"]

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> FarmConfig:
    path = write(tmp_path / "farm.toml", text)
    kwargs.setdefault("env", {})
    return load_config(path, **kwargs)  # type: ignore[arg-type]


def error_of(tmp_path: Path, text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    return str(info.value)
