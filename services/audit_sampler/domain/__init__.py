"""Pure audit-sampling logic: policy, sampling decisions, queue rules, verdicts. No I/O here."""
