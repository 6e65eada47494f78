"""Fixtures for the training tests: real pairs built from the bundled samples."""

from __future__ import annotations

from pathlib import Path

import pytest
from _train_helpers import sample_pairs, write_pairs_manifest

from st_workflow.manifest import Manifest


@pytest.fixture(scope="session")
def pair_rows(samples_dir: Path) -> list[dict]:
    return sample_pairs(samples_dir)


@pytest.fixture(scope="session")
def pairs_manifest(tmp_path_factory: pytest.TempPathFactory, pair_rows: list[dict]) -> Manifest:
    return write_pairs_manifest(tmp_path_factory.mktemp("pairs"), pair_rows)
