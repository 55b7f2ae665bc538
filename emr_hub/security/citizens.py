"""Finding the citizen a token is for: the person key of a CCCD that a live Patient carries.

The CCCD is looked up through the search index (the ``identifier`` token rows of Patients),
and only its person key leaves this module: the CCCD itself goes into no token, log line or
error message.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from emr_hub.fhir.identifiers import CCCD, cccd_problem
from emr_hub.fhir.persons import person_of_cccd
from storage.tables import ResourceRow, SearchTokenRow


class UnknownCitizen(ValueError):
    """The CCCD is malformed, or no live Patient carries it; the message names neither."""


def citizen_person(session: Session, cccd: str) -> str:
    """The person key of the citizen with national ID ``cccd``."""
    problem = cccd_problem(cccd)
    if problem is not None:
        raise UnknownCitizen(f"Not a well-formed CCCD: {problem}")
    statement = (
        select(ResourceRow.id)
        .join(
            SearchTokenRow,
            (col(SearchTokenRow.resource_type) == col(ResourceRow.resource_type))
            & (col(SearchTokenRow.resource_id) == col(ResourceRow.id)),
        )
        .where(
            col(SearchTokenRow.resource_type) == "Patient",
            col(SearchTokenRow.param) == "identifier",
            col(SearchTokenRow.system) == CCCD,
            col(SearchTokenRow.code) == cccd,
            col(ResourceRow.deleted).is_(False),
        )
        .limit(1)
    )
    if session.scalars(statement).first() is None:
        raise UnknownCitizen(
            "No live Patient in the hub carries this CCCD: a citizen's token is only for a "
            "person the hub holds records of"
        )
    return person_of_cccd(cccd)
