"""What one request touched, gathered while it runs, for its audit record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal


@dataclass
class AuditTrail:
    """Filled by the request's dependencies, routes and store; read by the audit middleware."""

    request_id: str
    address: str | None = None
    principal: Principal | None = None
    persisted: bool = field(default=False)
