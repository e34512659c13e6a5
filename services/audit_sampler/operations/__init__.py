"""The audit service layer: one module per use case, shared by the JSON API (``api.py``) and the workbench
(``web/``), so the rules (roles, regions, leases, blind audits, separation of duties) live in one place.

- ``claims``: queue overview, claim next (lease), read an item blind, release, reassign
- ``verdicts``: score a claimed item; ledger correction, inspection level, calibration draw
- ``disputes``: dispute a failed verdict, resolve it (four eyes), list disputes
- ``gold``: seed a known-answer item, check one without writing
- ``approvals``: the approval stage of compensation requests (decide, escalate, SLA escalation)
- ``corrective_actions``: open, change, list and measure corrective actions; publish their effects
- ``announce``: the events audit_sampler tells the read side

Every operation takes the engine and the acting ``Principal`` first, checks role and region grant itself,
runs in one transaction and returns plain dicts. What it needs besides the database comes in as a
``runtime.Runtime`` (no process-wide state). A refusal is an ``errors.AuditError`` (NotFound, Forbidden,
Conflict, Invalid); ``problems.py`` maps it to an RFC 9457 problem for the API and the pages.
"""
