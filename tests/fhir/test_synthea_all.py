"""Every Synthea bundle of the shared data loads and reads back identical content.

The shared data lives beside the repository (``../shared/data/synthea-r4``), not in it: the
test is skipped, with that reason, on a clone that has no such folder next to it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.fhir.conftest import Api
from tests.fhir.test_bundles import check_round_trip, post_synthea

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "synthea-r4"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared Synthea data not found at {SHARED}")
def test_every_shared_synthea_bundle_round_trips(api: Api) -> None:
    files = sorted(SHARED.glob("*.json"))
    assert len(files) >= 28
    directory: dict[str, str] = {}
    loaded = 0
    for path in files:
        body = orjson.loads(path.read_bytes())
        mapping = post_synthea(api, body)
        check_round_trip(api, body, directory | mapping)
        if path.name.startswith("00-"):
            directory |= mapping
        loaded += len(body["entry"])
    assert loaded >= 8000
