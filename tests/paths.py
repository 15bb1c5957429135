"""Where the shared test data lives: ../shared beside the repo (worktrees sit in the same folder)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "sse"
SEEDS = SHARED / "seeds"
