"""benchmarks/ssl_bench.py: a study variant (``cfm:w=0.1,t=0.2``) reaches the CTR run through the config layer's
overrides, exactly as ``recsparse train … loss.ssl.*=…`` would."""

from __future__ import annotations

import pytest

from recsparse.config import apply_overrides
from recsparse.models.ssl import SSLConfig
from recsparse.pipelines.config import CTRConfig
from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/ssl_bench.py")


def _ssl(bench, variant: str) -> SSLConfig:
    return CTRConfig.from_dict(apply_overrides({"data": {"dataset": "adult"}}, bench.variant_overrides(variant))).loss.ssl


def test_variants_become_the_ctr_configs_loss_ssl(bench):
    assert not _ssl(bench, "none").enabled
    assert _ssl(bench, "cfm:w=0.1,t=0.2") == SSLConfig(augment="cfm", weight=0.1, temperature=0.2)
    assert _ssl(bench, "rfm") == SSLConfig(augment="rfm", weight=0.3)  # the study's default weight
    assert _ssl(bench, "rfm:d=0.1,b=64") == SSLConfig(augment="rfm", weight=0.3, dropout=0.1, batch_size=64)


def test_unknown_variant_key_is_refused(bench):
    with pytest.raises(SystemExit, match="unknown keys \\['x'\\]"):
        bench.variant_overrides("cfm:x=1")
