"""audit_sampler: samples manual compensations for quality audit and runs the audit workbench."""
