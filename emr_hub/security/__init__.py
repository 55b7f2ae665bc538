"""Authentication and authorization: OAuth 2.0 client credentials, SMART v2 system scopes,
ES256 JWT access tokens signed with a key shared through the database.

Routers protect themselves with :data:`PrincipalDep` and call ``principal.require(type, "r")``.
"""

from emr_hub.security.principal import Principal, PrincipalDep
from emr_hub.security.scopes import ScopeSet

__all__ = ["Principal", "PrincipalDep", "ScopeSet"]
