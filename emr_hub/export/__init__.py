"""FHIR Bulk Data export (``$export``, Bulk Data Access IG STU 2): NDJSON files of what the
caller may see, written by a worker to the object store and downloaded through links.

* :mod:`.request` reads and checks the kick-off's parameters;
* :mod:`.jobs` keeps the ``export_job`` rows (one running export per client, leases,
  checkpoints, expiry);
* :mod:`.scan` is the SQL of the keyset batches, policy included;
* :mod:`.files` writes the gzip'ed NDJSON files; :mod:`.runner` runs an export with
  checkpoints; :mod:`.tasks` runs it on a Celery worker or in a thread, and sweeps;
* :mod:`.manifest` and :mod:`.routes` are the HTTP side.
"""

from __future__ import annotations

from emr_hub.fhir import operations
from emr_hub.tasks import register_housekeeping

BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"


def install() -> None:
    """Declare the operations, have the in-process relay thread run the sweep, and report
    the jobs by status in /metrics."""
    from emr_hub.export import metrics
    from emr_hub.export.tasks import sweep

    operations.declare(
        None,
        "export",
        f"{BULK}/export",
        "Bulk Data export of everything the client may see (Prefer: respond-async; "
        "_outputFormat, _since, _type, _typeFilter); NDJSON files in the object store.",
    )
    operations.declare(
        "Patient",
        "export",
        f"{BULK}/patient-export",
        "Bulk Data export of the Patient compartments the client may see (and patient on POST).",
    )
    operations.declare(
        "Group",
        "export",
        f"{BULK}/group-export",
        "Bulk Data export of the compartments of the Group's active Patient members.",
    )
    register_housekeeping(sweep)
    metrics.install()
