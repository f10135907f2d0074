"""The optional top-level ``Reconciliation`` block: every key optional, each validated."""

from __future__ import annotations

import copy

import pytest

from pools.config import ConfigError, config_parse
from tests.pools.test_config import GOOD


def test_the_block_and_each_key_are_optional_with_their_defaults():
    cfg = config_parse(data=GOOD).reconciliation
    assert (cfg.quiet_seconds, cfg.reverify_hours, cfg.check_other_backends, cfg.max_queries_per_second,
            cfg.concurrency) == (300, 24, True, 5, 2)
    block = {"QuietSeconds": 0.5, "CheckOtherBackends": False}
    cfg = config_parse(data=GOOD | {"Reconciliation": block}).reconciliation
    assert (cfg.quiet_seconds, cfg.check_other_backends, cfg.reverify_hours) == (0.5, False, 24)


@pytest.mark.parametrize("block, expected", [
    ({"QuietSeconds": 0.4}, "Reconciliation.QuietSeconds: must be >= 0.5"),
    ({"ReverifyHours": 0}, "Reconciliation.ReverifyHours: must be > 0"),
    ({"CheckOtherBackends": "yes"}, "Reconciliation.CheckOtherBackends: expected true or false, got the string"),
    ({"MaxQueriesPerSecond": 0}, "Reconciliation.MaxQueriesPerSecond: must be > 0"),
    ({"Concurrency": 0}, "Reconciliation.Concurrency: must be >= 1"),
    ({"Concurrency": "2"}, "Reconciliation.Concurrency: expected an integer, got the string '2'"),
    ({"QuietSecs": 5}, "Reconciliation.QuietSecs: unknown key"),
])
def test_each_key_is_validated_and_named(block, expected):
    with pytest.raises(ConfigError) as exc:
        config_parse(data=copy.deepcopy(GOOD) | {"Reconciliation": block})
    assert any(e.startswith(expected) for e in exc.value.errors), exc.value.errors
