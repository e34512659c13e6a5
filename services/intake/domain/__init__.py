"""Intake's pure logic: request items, their checks, fingerprints, API key scopes and rate limits."""
