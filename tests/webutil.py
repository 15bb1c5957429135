"""Helpers for the browser tests: Debian's Chromium driven by Playwright's sync API."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium binary, or a test failure that says how to install it (never a silent skip)."""
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "the browser tests need Debian's Chromium: apt-get install -y chromium "
        "(./scripts/test installs it when run as root)"
    )


def screenshot(page, name: str) -> Path:
    """Save a screenshot of the page under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False, timeout=10_000)
    return path
