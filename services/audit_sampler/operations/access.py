"""Who may do what, for every audit operation: role sets, role and region checks raising ``Forbidden``,
and the one rule for which regions a caller sees (``region_scope``), which persistence turns into SQL with
``persistence.regions.region_filter``."""

from __future__ import annotations

from services.audit_sampler.operations.errors import Forbidden, NotFound
from shared.auth import ALL_REGIONS, Principal
from shared.regions import UnknownRegion, catalogue

AUDIT_ROLES = ("auditor", "senior_auditor", "lead")
VIEW_ROLES = (*AUDIT_ROLES, "ops_admin")
LEAD_ROLES = ("lead", "ops_admin")
RESOLVE_ROLES = ("senior_auditor",)
SUPERVISOR_ROLES = ("lead", "senior_auditor", "ops_admin")


def require_role(principal: Principal, *roles: str) -> None:
    if not principal.has_role(*roles):
        raise Forbidden(f"requires one of the roles: {', '.join(roles)}")


def require_region(principal: Principal, region: str) -> None:
    if not principal.can_access(region):
        raise Forbidden(f"no grant for region {region}", errors=[
            {"field": "region", "message": f"principal {principal.subject} may not act in region {region}"}])


def check_region_code(region: str) -> None:
    """404 naming the field when the region is not in the catalogue."""
    try:
        catalogue().get(region)
    except UnknownRegion:
        raise NotFound(f"unknown region {region}",
                       errors=[{"field": "region", "message": "not in the region catalogue"}]) from None


def region_scope(principal: Principal, region: str | None = None, *, check_code: bool = False
                 ) -> list[str] | None:
    """The regions a listing shows: the one asked for (granted, else ``Forbidden``), or every region the
    caller is granted; None means all regions (a ``*`` grant), which the SQL filter treats as no filter."""
    if region:
        if check_code:
            check_region_code(region)
        require_region(principal, region)
        return [region]
    return None if ALL_REGIONS in principal.regions else sorted(principal.regions)


def is_supervisor(principal: Principal) -> bool:
    return principal.has_role(*SUPERVISOR_ROLES)
