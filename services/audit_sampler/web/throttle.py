"""Sign-in throttling of the workbench: the shared rule (``shared.web.throttle``, docs/audit.md "Sign-in")."""

from shared.web.throttle import (
    Counter,
    Key,
    Limits,
    Scope,
    account_key,
    admitted,
    count_failure,
    give_back,
    keys,
    limit_of,
    network_client,
    newly_locked,
)

__all__ = ["Counter", "Key", "Limits", "Scope", "account_key", "admitted", "count_failure", "give_back", "keys",
           "limit_of", "network_client", "newly_locked"]
