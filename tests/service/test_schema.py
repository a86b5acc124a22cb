"""Property test over the app's own OpenAPI schema: no input yields a 5xx.

The app is built at import time (schemathesis parametrises from a loaded schema), over a
throwaway SQLite store seeded with the synthetic catalog and a small fitted model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from serendip.data import Dataset
from serendip.pipeline import Recommender
from serendip.service import create_app
from serendip.store import open_store
from tests.service.conftest import SMALL, HashEncoder, build_engine, make_keys, write_seed

_DIR = Path(tempfile.mkdtemp(prefix="serendip-schema-"))
_SEED = write_seed(_DIR)
_ENC = HashEncoder()
_STORE = open_store(f"sqlite:///{_DIR / 'serendip.db'}")
_REC = Recommender.fit(Dataset.from_files(_SEED.interactions, _SEED.items), SMALL,
                       progress=False, encoder=_ENC)  # type: ignore[arg-type]
_ENGINE = build_engine(_STORE, _DIR, _SEED, _REC, _ENC)
_KEY = make_keys(_STORE).admin
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_ENGINE))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    _STORE.close()
    shutil.rmtree(_DIR, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_server_errors(case):
    response = case.call(headers={"X-API-Key": _KEY})
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:500])
