"""A serving process's collector policy (server/heap.py): what "tuned" changes, and that it is a setting."""

from __future__ import annotations

import gc

import pytest

from tokenwire.config import ConfigError, load_settings
from tokenwire.server.heap import FULL_PASS_EVERY, apply_gc_policy


def test_tuned_freezes_the_start_up_heap_and_makes_full_passes_rarer() -> None:
    before = gc.get_threshold()
    try:
        apply_gc_policy("tuned")
        assert gc.get_freeze_count() > 1000  # this interpreter's modules, classes, functions
        assert gc.get_threshold() == (before[0], before[1], FULL_PASS_EVERY) and FULL_PASS_EVERY > before[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_default_leaves_the_collector_as_it_is() -> None:
    before = gc.get_threshold()
    apply_gc_policy("default")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_policy_is_a_setting_and_a_typo_is_refused(tmp_path) -> None:
    assert load_settings(env={"HOME": str(tmp_path)}).gc_policy == "tuned"
    assert load_settings(env={"HOME": str(tmp_path), "TOKENWIRE_GC_POLICY": "default"}).gc_policy == "default"
    with pytest.raises(ConfigError, match="gc_policy must be tuned or default"):
        load_settings(env={"HOME": str(tmp_path), "TOKENWIRE_GC_POLICY": "off"})
