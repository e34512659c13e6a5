"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below.

    python deploy/grafana/build_dashboards.py          # rewrite the JSON files
    python deploy/grafana/build_dashboards.py --check  # exit 1 when a file differs from what this writes

The JSON is generated so every dashboard has the same layout, units and datasource, and a metric renamed in
code is renamed in one place here; tests/unit/test_deploy_files.py checks that every metric a panel
queries exists in the services' metrics modules and that the committed files are this script's output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yaml
SERVICES = ("intake", "auto_comp", "audit_sampler", "ledger", "insights")
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    region_variable: str | None = None  # a metric with a region label: adds a region selector
    tags: tuple[str, ...] = field(default=("compensation-platform",))


def p(title: str, *targets: tuple[str, str], unit: str = "short", description: str = "",
      kind: str = "timeseries") -> Panel:
    return Panel(title, targets, unit, description, kind)


def q99(metric: str, by: str, selector: str = "") -> str:
    return f"histogram_quantile(0.99, sum by ({by}, le) (rate({metric}_bucket{selector}{RATE})))"


# --- the toolkit's metrics, for one service --------------------------------------------------------------

def toolkit_rows(service: str, consumes: bool = True, publishes: bool = True) -> tuple[Row, ...]:
    http = f'{{service="{service}"}}'
    group = f'{{group=~"{service}.*"}}'
    out = f'{{service="{service}"}}'
    rows = [Row("HTTP", (
        p("Requests by route and status",
          (f"sum by (route, status) (rate(comp_http_requests_total{http}{RATE}))", "{{route}} {{status}}"),
          unit="reqps"),
        p("Latency p99 by route", (q99("comp_http_request_duration_seconds", "route", http), "{{route}}"), unit="s"),
    ))]
    if consumes:
        rows.append(Row("Consumers", (
            p("Records processed by topic",
              (f"sum by (group, topic) (rate(comp_consumer_records_processed_total{group}{RATE}))",
               "{{group}} {{topic}}"), unit="rps"),
            p("Consumer lag (records behind)", (f"sum by (group, topic) (comp_consumer_lag{group})",
                                                "{{group}} {{topic}}")),
            p("Duplicates, failures, dead letters",
              (f"sum by (group) (rate(comp_consumer_records_duplicate_total{group}{RATE}))", "duplicates {{group}}"),
              (f"sum by (group) (rate(comp_consumer_records_failed_total{group}{RATE}))", "failed {{group}}"),
              (f"sum by (group) (rate(comp_consumer_records_dead_lettered_total{group}{RATE}))",
               "dead-lettered {{group}}"), unit="rps",
              description="Dead letters are poison messages set aside with their reason; any is worth a look."),
            p("Batch duration p99", (q99("comp_consumer_batch_duration_seconds", "group", group), "{{group}}"),
              unit="s"),
            p("Retries, loop restarts, commit failures",
              (f"sum by (group) (rate(comp_consumer_transient_retries_total{group}{RATE}))", "retries {{group}}"),
              (f"sum by (group) (rate(comp_consumer_loop_restarts_total{group}{RATE}))", "restarts {{group}}"),
              (f"sum by (group) (rate(comp_consumer_kafka_commit_failures_total{group}{RATE}))",
               "commit failures {{group}}"), unit="rps",
              description="Commit failures are harmless (offsets of record live in the database); restarts are not."),
            p("Records per batch p99", (q99("comp_consumer_batch_records", "group", group), "{{group}}")),
        )))
    if publishes:
        rows.append(Row("Outbox", (
            p("Backlog (rows not yet published)", (f"max(comp_outbox_backlog{out})", "backlog")),
            p("Oldest unpublished row", (f"max(comp_outbox_oldest_age_seconds{out})", "age"), unit="s"),
            p("Published by topic", (f"sum by (topic) (rate(comp_outbox_published_total{out}{RATE}))", "{{topic}}"),
              (f"sum(rate(comp_outbox_publish_errors_total{out}{RATE}))", "publish errors"), unit="rps"),
            p("Publish latency p99 (insert to broker ack)",
              (q99("comp_outbox_publish_latency_seconds", "service", out), "p99"), unit="s"),
        )))
    return tuple(rows)


# --- the dashboards ------------------------------------------------------------------------------------------

REGION = '{region=~"$region"}'

OVERVIEW = Dashboard(
    "comp-overview", "Compensation platform: overview",
    "All five services at a glance: traffic, errors, latency, consumer lag, outbox backlog, dead letters, "
    "budget usage.",
    (
        Row("Health", (
            p("Services up", ('up{job=~"intake|auto_comp|audit_sampler|ledger|insights"}', "{{job}}"), kind="stat",
              description="1 when Prometheus scraped the service's /metrics last time."),
            p("HTTP requests by service", (f"sum by (service) (rate(comp_http_requests_total{RATE}))",
                                           "{{service}}"), unit="reqps"),
            p("HTTP 5xx share by service",
              (f'sum by (service) (rate(comp_http_requests_total{{status=~"5.."}}{RATE})) / '
               f"sum by (service) (rate(comp_http_requests_total{RATE}))", "{{service}}"), unit="percentunit"),
            p("HTTP latency p99 by service", (q99("comp_http_request_duration_seconds", "service"), "{{service}}"),
              unit="s"),
        )),
        Row("Business flow", (
            p("Events accepted by intake", (f"sum by (event_type) (rate(intake_events_accepted_total{RATE}))",
                                            "{{event_type}}"), unit="rps"),
            p("Events and requests refused",
              (f"sum by (reason) (rate(intake_events_rejected_total{RATE}))", "event: {{reason}}"),
              (f"sum by (reason) (rate(intake_requests_refused_total{RATE}))", "request: {{reason}}"), unit="rps"),
            p("Automatic decisions by outcome", (f"sum by (outcome) (rate(auto_comp_decisions_total{RATE}))",
                                                 "{{outcome}}"), unit="rps"),
            p("Decision latency p99 (accepted to decided)", (q99("auto_comp_decision_latency_seconds", "region"),
                                                            "{{region}}"), unit="s"),
            p("Ledger transactions by kind", (f"sum by (kind) (rate(ledger_transactions_total{RATE}))", "{{kind}}"),
              unit="rps"),
            p("Insights events consumed", (f"sum(rate(insights_events_consumed_total{RATE}))", "events"), unit="rps"),
        )),
        Row("Pipelines", (
            p("Consumer lag by group", ("sum by (group) (comp_consumer_lag)", "{{group}}"),
              description="Records behind the high watermark, all partitions of the group's topics."),
            p("Dead letters (last hour)",
              ("sum by (group, topic) (increase(comp_consumer_records_dead_lettered_total[1h]))",
               "{{group}} {{topic}}")),
            p("Outbox backlog by service", ("max by (service) (comp_outbox_backlog)", "{{service}}")),
            p("Oldest unpublished outbox row", ("max by (service) (comp_outbox_oldest_age_seconds)", "{{service}}"),
              unit="s"),
            p("Insights: age of the newest event in the rollups",
              ("time() - max(insights_newest_event_timestamp_seconds)", "age"), unit="s",
              description="How far the rollups are behind the business while events flow; reports show new "
                          "events within 60 s. It grows when no events arrive (a quiet night) too."),
            p("Audit queues: oldest waiting item", ("max by (region, queue) (audit_queue_oldest_age_seconds)",
                                                    "{{region}} {{queue}}"), unit="s"),
        )),
        Row("Budget", (
            p("Budget used (reserved + posted over limit)", ("max by (region, period) (ledger_budget_used_ratio)",
                                                              "{{region}} {{period}}"), unit="percentunit"),
            p("Manual compensations past the budget (last day)",
              ("sum by (region) (increase(ledger_budget_exceeded_total[1d]))", "{{region}}")),
            p("Ledger invariant violations", ("max by (check) (ledger_invariant_violations)", "{{check}}"),
              description="Any non-zero value means the books need attention now."),
            p("Budget answers by outcome", (f"sum by (outcome) (rate(ledger_budget_decisions_total{RATE}))",
                                            "{{outcome}}"), unit="rps"),
        )),
    ))

INTAKE = Dashboard(
    "comp-intake", "Compensation platform: intake", "Event API of the upstream systems.",
    (
        Row("Events", (
            p("Accepted by event type", (f"sum by (event_type) (rate(intake_events_accepted_total{REGION}{RATE}))",
                                         "{{event_type}}"), unit="rps"),
            p("Duplicates (same event id and content)",
              (f"sum by (event_type) (rate(intake_events_duplicate_total{REGION}{RATE}))", "{{event_type}}"),
              unit="rps"),
            p("Rejected by reason", (f"sum by (reason) (rate(intake_events_rejected_total{REGION}{RATE}))",
                                     "{{reason}}"), unit="rps"),
            p("Requests refused before reading", (f"sum by (reason) (rate(intake_requests_refused_total{RATE}))",
                                                  "{{reason}}"), unit="rps"),
            p("Submission latency p99 by route", (q99("intake_request_duration_seconds", "route"), "{{route}}"),
              unit="s"),
            p("Items per batch p99", (q99("intake_batch_items", "event_type"), "{{event_type}}")),
            p("Outbox backlog as intake counts it", ("max(intake_outbox_backlog)", "backlog")),
            p("Oldest unpublished row as intake counts it", ("max(intake_outbox_oldest_age_seconds)", "age"), unit="s"),
            p("Idempotency records purged", (f"sum(rate(intake_idempotency_records_purged_total{RATE}))", "purged"),
              unit="rps"),
        )),
        *toolkit_rows("intake", consumes=False),
    ), region_variable="intake_events_accepted_total")

AUTO_COMP = Dashboard(
    "comp-auto-comp", "Compensation platform: auto_comp", "Automatic decisions, vouchers and budget allowances.",
    (
        Row("Decisions", (
            p("Decisions by outcome", (f"sum by (outcome) (rate(auto_comp_decisions_total{REGION}{RATE}))",
                                       "{{outcome}}"), unit="rps"),
            p("Decisions by strategy and mode",
              (f"sum by (strategy, mode) (rate(auto_comp_decisions_total{REGION}{RATE}))", "{{strategy}} {{mode}}"),
              unit="rps"),
            p("Issued by strategy and kind", (f"sum by (strategy, kind) (rate(auto_comp_issued_total{REGION}{RATE}))",
                                              "{{strategy}} {{kind}}"), unit="rps"),
            p("Amount issued (minor units per second)",
              (f"sum by (region, currency) (rate(auto_comp_issued_amount_minor_total{REGION}{RATE}))",
               "{{region}} {{currency}}")),
            p("Decision latency p99", (q99("auto_comp_decision_latency_seconds", "region", REGION), "{{region}}"),
              unit="s"),
            p("Ticket to voucher p99", (q99("auto_comp_ticket_to_voucher_seconds", "region", REGION), "{{region}}"),
              unit="s"),
            p("Batch decide time p99", ("histogram_quantile(0.99, sum by (le) "
                                        f"(rate(auto_comp_decision_batch_seconds_bucket{RATE})))", "p99"), unit="s"),
        )),
        Row("Budget allowances and strategies", (
            p("Waiting for an allowance", ("max(auto_comp_waiting_compensations)", "waiting")),
            p("Oldest waiting for an allowance", ("max(auto_comp_waiting_oldest_seconds)", "age"), unit="s"),
            p("Allowance requests, answers, returns",
              (f"sum by (region, why) (rate(auto_comp_allowance_requests_total{REGION}{RATE}))",
               "asked {{why}} {{region}}"),
              (f"sum by (region, outcome, limited_by) (rate(auto_comp_allowance_answers_total{REGION}{RATE}))",
               "answer {{outcome}} {{limited_by}} {{region}}"),
              (f"sum by (region, reason) (rate(auto_comp_allowance_returns_total{REGION}{RATE}))",
               "returned {{reason}} {{region}}"), unit="rps"),
            p("Strategy versions loaded",
              ("max by (strategy, mode) (auto_comp_strategy_version)", "{{strategy}} {{mode}}"),
              ("max by (version) (auto_comp_strategy_config_info)", "set {{version}}")),
            p("Strategy reloads", (f"sum by (result) (rate(auto_comp_strategy_reloads_total{RATE}))", "{{result}}"),
              ("max(auto_comp_strategy_reload_failed)", "last reload failed")),
            p("Vouchers closed by the promotion system",
              (f"sum by (state, early) (rate(auto_comp_voucher_lifecycle_total{REGION}{RATE}))",
               "{{state}} early={{early}}"),
              (f"sum(rate(auto_comp_voucher_lifecycle_skipped_total{RATE}))", "skipped (manual)"), unit="rps"),
        )),
        *toolkit_rows("auto_comp"),
    ), region_variable="auto_comp_decisions_total")

AUDIT = Dashboard(
    "comp-audit-sampler", "Compensation platform: audit_sampler", "Sampling, audit queues, verdicts and accuracy.",
    (
        Row("Sampling and queues", (
            p("Population and sampled",
              (f"sum(rate(audit_population_total{REGION}{RATE}))", "population"),
              (f"sum by (reason) (rate(audit_sampled_total{REGION}{RATE}))", "sampled: {{reason}}"), unit="rps"),
            p("Dropped over capacity", (f"sum by (queue) (rate(audit_capacity_dropped_total{REGION}{RATE}))",
                                        "{{queue}}"), unit="rps"),
            p("Queue depth and claimed", (f"sum by (queue) (audit_queue_depth{REGION})", "waiting {{queue}}"),
              (f"sum by (queue) (audit_queue_claimed{REGION})", "claimed {{queue}}")),
            p("Oldest waiting item", (f"max by (queue) (audit_queue_oldest_age_seconds{REGION})", "{{queue}}"),
              unit="s"),
            p("Items past their SLA", (f"sum by (queue) (audit_queue_sla_breached{REGION})", "{{queue}}")),
            p("Oldest waiting item against its SLA",
              (f"max by (queue) (audit_queue_oldest_age_seconds{REGION} / audit_queue_sla_seconds{REGION})",
               "{{queue}}"), unit="percentunit", description="Above 100%: AuditQueueOverSla."),
        )),
        Row("Verdicts and quality", (
            p("Verdicts by outcome", (f"sum by (item_kind, outcome) (rate(audit_verdicts_total{REGION}{RATE}))",
                                      "{{item_kind}} {{outcome}}"), unit="rps"),
            p("Failed attributes", (f"sum by (attribute) (rate(audit_verdict_attribute_failures_total{REGION}{RATE}))",
                                    "{{attribute}}"), unit="rps"),
            p("Corrections and disputes", (f"sum by (kind) (rate(audit_corrections_total{REGION}{RATE}))",
                                           "correction {{kind}}"),
              (f"sum by (event) (rate(audit_disputes_total{REGION}{RATE}))", "dispute {{event}}"), unit="rps"),
            p("Accuracy (last 30 days)", (f"max by (region) (audit_estimated_accuracy_ratio{REGION})",
                                          "estimated {{region}}"),
              (f"max by (region) (audit_gold_accuracy_ratio{REGION})", "gold {{region}}"),
              (f"max by (region) (audit_calibration_agreement_ratio{REGION})", "double-audit agreement {{region}}"),
              unit="percentunit"),
            p("Policy reloads", (f"sum by (result) (rate(audit_policy_reloads_total{RATE}))", "{{result}}"),
              unit="rps"),
        )),
        Row("Approvals and corrective actions", (
            p("Requests by outcome", (f"sum by (outcome) (rate(audit_requests_total{REGION}{RATE}))", "{{outcome}}"),
              unit="rps", description="auto_approved: within the authority limits; queued: above them."),
            p("Approval rate by team",
              (f"sum by (team) (rate(audit_requests_total{{region=~\"$region\",outcome=~\"auto_approved|approved\"}}"
               f"{RATE})) / sum by (team) (rate(audit_requests_total{{region=~\"$region\",outcome=~\"auto_approved|"
               f"approved|rejected\"}}{RATE}))", "{{team}}"), unit="percentunit"),
            p("Time to decide p90", (
                f"histogram_quantile(0.9, sum by (le, region) (rate(audit_request_decision_seconds_bucket{REGION}"
                f"{RATE})))", "{{region}}"), unit="s"),
            p("Escalations and overrides",
              (f"sum by (by) (rate(audit_request_escalations_total{REGION}{RATE}))", "escalated by {{by}}"),
              (f"sum by (reason) (rate(audit_request_overrides_total{REGION}{RATE}))", "override {{reason}}"),
              unit="rps"),
            p("Waiting for an approver", (f"sum by (state) (audit_requests_waiting{REGION})", "{{state}}"),
              (f"sum(audit_requests_overdue{REGION})", "overdue (CompensationApprovalsOverdue)")),
            p("Issued against approval", (f"sum by (mismatch) (increase(audit_issue_mismatches_total{REGION}{RATE}))",
                                         "{{mismatch}}"),
              description="ManualCompensationsIssuedAgainstApproval at 5 an hour of one kind."),
            p("Corrective actions", (f"sum(audit_corrective_actions_open{REGION})", "open"),
              (f"sum(audit_corrective_actions_overdue{REGION})", "overdue")),
            p("Authority limits reloads", (f"sum by (result) (rate(audit_limits_reloads_total{RATE}))", "{{result}}"),
              unit="rps"),
        )),
        Row("Workbench", (
            p("Sign-ins by outcome", (f"sum by (outcome) (rate(audit_workbench_sign_ins_total{RATE}))",
                                      "{{outcome}}"), unit="rps"),
            p("Sign-in pauses by scope", (f"sum by (scope) (increase(audit_workbench_sign_in_locks_total{RATE}))",
                                          "{{scope}}"),
              description="scope=account: WorkbenchAccountUnderGuessing (distributed password guessing)."),
            p("CSRF rejections and sessions purged",
              (f"sum(rate(audit_workbench_csrf_rejected_total{RATE}))", "csrf rejected"),
              (f"sum(rate(audit_workbench_sessions_purged_total{RATE}))", "sessions purged"), unit="rps"),
            p("Report time p99", (q99("audit_report_seconds", "report"), "{{report}}"), unit="s"),
        )),
        *toolkit_rows("audit_sampler"),
    ), region_variable="audit_population_total")

LEDGER = Dashboard(
    "comp-ledger", "Compensation platform: ledger", "Journal, liable-party charges, budgets and invariants.",
    (
        Row("Journal and charges", (
            p("Transactions by kind", (f"sum by (kind) (rate(ledger_transactions_total{RATE}))", "{{kind}}"),
              unit="rps"),
            p("Charges by liable party", (f"sum by (party_type) (rate(ledger_charges_total{RATE}))",
                                          "{{party_type}}"), unit="rps"),
            p("Charged and reversed (minor units per second)",
              (f"sum by (party_type, currency) (rate(ledger_charged_minor_total{RATE}))",
               "charged {{party_type}} {{currency}}"),
              (f"sum by (party_type, currency) (rate(ledger_reversed_minor_total{RATE}))",
               "reversed {{party_type}} {{currency}}")),
            p("Events parked or ignored", (f"sum by (event_type) (rate(ledger_events_parked_total{RATE}))",
                                           "parked {{event_type}}"),
              (f"sum by (reason) (rate(ledger_events_ignored_total{RATE}))", "ignored {{reason}}"),
              (f"max by (region) (ledger_parked_events{REGION})", "waiting now {{region}}")),
            p("Oldest event waiting for its compensation",
              (f"max by (region) (ledger_parked_oldest_age_seconds{REGION})", "{{region}}"),
              ("max(ledger_park_window_seconds)", "dead-lettered at"), unit="s",
              description="Parked events are dead-lettered when they reach the park window (alert at half)."),
            p("Voucher expiries reported early", (f"sum by (region) (increase(ledger_voucher_early_expiries_total"
                                                  f"{REGION}{RATE}))", "{{region}}"),
              description="Applied and flagged on the lineage; usually an upstream clock or mapping error."),
        )),
        Row("Budgets", (
            p("Budget used", (f"max by (region, period) (ledger_budget_used_ratio{REGION})", "{{region}} {{period}}"),
              unit="percentunit"),
            p("Limit, reserved, posted (minor units)",
              (f"max by (region, period) (ledger_budget_limit_minor{REGION})", "limit {{region}} {{period}}"),
              (f"max by (region, period) (ledger_budget_reserved_minor{REGION})", "reserved {{region}} {{period}}"),
              (f"sum by (region, period, origin) (ledger_budget_posted_minor{REGION})",
               "posted {{origin}} {{region}} {{period}}")),
            p("Breakage (expired voucher value, minor units)",
              (f"max by (region, period) (ledger_budget_breakage_minor{REGION})", "{{region}} {{period}}")),
            p("Budget answers", (f"sum by (outcome, reason) (rate(ledger_budget_decisions_total{REGION}{RATE}))",
                                 "{{outcome}} {{reason}}"), unit="rps"),
            p("Thresholds crossed and overspends",
              (f"sum by (region, threshold) (increase(ledger_budget_threshold_crossed_total{REGION}[1d]))",
               "{{threshold}}% {{region}}"),
              (f"sum by (region) (increase(ledger_budget_exceeded_total{REGION}[1d]))", "past budget {{region}}")),
            p("Reservations swept", (f"sum by (why) (rate(ledger_reservations_swept_total{RATE}))", "{{why}}"),
              unit="rps"),
            p("Allotted to allowances (minor units)",
              (f"max by (region, period) (ledger_budget_allotted_minor{REGION})", "{{region}} {{period}}")),
            p("Allowance answers and returns",
              (f"sum by (region, outcome, limited_by) (rate(ledger_allowance_answers_total{REGION}{RATE}))",
               "{{outcome}} {{limited_by}} {{region}}"),
              (f"sum by (region, reason) (rate(ledger_allowance_returns_total{REGION}{RATE}))",
               "returned {{reason}} {{region}}"), unit="rps"),
            p("Allowance units granted and released",
              (f"sum by (region, currency) (rate(ledger_allowance_granted_minor_total{REGION}{RATE}))",
               "granted {{region}} {{currency}}"),
              (f"sum by (region, currency) (rate(ledger_allowance_released_minor_total{REGION}{RATE}))",
               "released {{region}} {{currency}}")),
            p("Allowances overdue", (f"max by (region) (ledger_allowances_overdue{REGION})", "{{region}}"),
              description="Open past expiry: auto_comp has not returned them (alert LedgerAllowancesOverdue)."),
            p("Journal transfer rows", (f"sum by (kind) (rate(ledger_transfers_total{RATE}))", "{{kind}}"),
              unit="rps"),
        )),
        Row("Invariants", (
            p("Violations by check", ("max by (check) (ledger_invariant_violations)", "{{check}}")),
            p("Since the last invariant run", ("time() - max(ledger_invariant_last_run_timestamp_seconds)", "age"),
              unit="s"),
        )),
        *toolkit_rows("ledger"),
    ), region_variable="ledger_budget_used_ratio")

INSIGHTS = Dashboard(
    "comp-insights", "Compensation platform: insights", "The read side: rollups and reports.",
    (
        Row("Rollups and reports", (
            p("Events consumed into rollups", (f"sum(rate(insights_events_consumed_total{RATE}))", "events"),
              unit="rps"),
            p("Age of the newest event applied, by topic",
              ("time() - max by (topic) (insights_newest_event_timestamp_seconds)", "{{topic}}"), unit="s",
              description="New events must show in reports within 60 s; the age also grows when a topic is quiet."),
            p("Batch time p95", (f"histogram_quantile(0.95, sum by (le) (rate(insights_batch_seconds_bucket{RATE})))",
                                 "p95"), unit="s"),
            p("Rollup delta rows written and compacted",
              (f"sum(rate(insights_delta_rows_written_total{RATE}))", "deltas written"),
              (f"sum(rate(insights_compacted_rows_total{RATE}))", "rows compacted"), unit="rps"),
            p("Strategy returns: decisions and buyer orders stored, orders purged",
              (f"sum by (outcome) (rate(insights_return_exposures_total{REGION}{RATE}))", "{{outcome}}"),
              (f"sum(rate(insights_buyer_orders_total{REGION}{RATE}))", "orders stored"),
              (f"sum(rate(insights_buyer_orders_purged_total{RATE}))", "orders purged"), unit="rps"),
            p("Delta rows pending", ("max(insights_delta_rows_pending)", "pending"),
              description="Reports read pending deltas too; they slow down as these pile up."),
            p("Since the last compaction", ("time() - max(insights_last_compaction_timestamp_seconds)", "age"),
              unit="s", description="InsightsRollupsStale fires above 5 minutes."),
            p("Report time p95 and p99",
              (f"histogram_quantile(0.95, sum by (le) (rate(insights_report_seconds_bucket{RATE})))", "p95"),
              (f"histogram_quantile(0.99, sum by (le) (rate(insights_report_seconds_bucket{RATE})))", "p99"),
              unit="s", description="The bar: a month report for one region under 200 ms p95."),
        )),
        Row("Spike detection", (
            p("Open spike episodes by region and dimension",
              (f"max by (region, dimension) (insights_spike_episodes_open{REGION})", "{{region}} {{dimension}}"),
              description="Episodes whose last alert is on the last complete local day (InsightsSpikeOpen); "
                          "GET /v1/spikes/{region}?status=open lists them with contributors."),
            p("Spike alerts stored and published",
              (f"sum by (region, dimension, kind) (increase(insights_spikes_detected_total{REGION}[1h]))",
               "{{region}} {{dimension}} {{kind}}"),
              description="Each one an insight.spike_detected event, published once."),
            p("Series judged per round",
              (f"max by (region, dimension) (insights_spike_series_judged{REGION})", "{{region}} {{dimension}}"),
              description="Series over the volume guard's pre-filter whose last days are new or changed; the "
                          "others were judged before on the same counts."),
            p("Detector round time p95 and since the last round",
              (f"histogram_quantile(0.95, sum by (le) (rate(insights_spike_round_seconds_bucket{RATE})))",
               "round p95"),
              ("time() - max(insights_spike_last_round_timestamp_seconds)", "since the last round"), unit="s",
              description="InsightsSpikeDetectorStale fires when no round finished for an hour."),
        )),
        Row("Budget usage (issue 15)", (
            p("Days the budget lasts past the period end at the current pace",
              (f"(max by (region, period) (insights_budget_projected_exhaustion_timestamp_seconds{REGION}) - "
               f"max by (region, period) (insights_budget_period_end_timestamp_seconds{REGION})) / 86400",
               "{{region}} {{period}}"),
              description="Negative: the limit is reached that many days before the period ends "
                          "(InsightsBudgetExhaustsBeforePeriodEnd)."),
            p("Budget plan and market report time p95",
              ("histogram_quantile(0.95, sum by (le, kind) (rate(insights_report_seconds_bucket"
               f'{{kind=~"budget_plan|market"}}{RATE})))', "{{kind}}"), unit="s"),
        )),
        Row("Dashboard pages", (
            p("Sign-ins by outcome", (f"sum by (outcome) (rate(insights_dashboard_sign_ins_total{RATE}))",
                                      "{{outcome}}"), unit="rps"),
            p("Sign-in pauses by scope",
              (f"sum by (scope) (increase(insights_dashboard_sign_in_locks_total{RATE}))", "{{scope}}"),
              description="scope=account: one dashboard account guessed from many addresses."),
            p("CSRF rejections and sessions purged",
              (f"sum(rate(insights_dashboard_csrf_rejected_total{RATE}))", "csrf rejected"),
              (f"sum(rate(insights_dashboard_sessions_purged_total{RATE}))", "sessions purged"), unit="rps"),
            p("Page data time p99", (q99("insights_dashboard_page_seconds", "page"), "{{page}}"), unit="s"),
        )),
        *toolkit_rows("insights"),
    ), region_variable="insights_spike_episodes_open")

DASHBOARDS = (OVERVIEW, INTAKE, AUTO_COMP, AUDIT, LEDGER, INSIGHTS)


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": ({"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                     "tooltip": {"mode": "multi", "sort": "desc"}} if panel.kind == "timeseries"
                    else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "background", "graphMode": "none"}),
        "targets": [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                    for i, (expr, legend) in enumerate(panel.targets)],
    }


def render(dash: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in dash.rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, panel in enumerate(row.panels):
            panels.append(_panel(panel, pid, 12 * (i % 2), y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(row.panels) + 1) // 2)
    variables: list[dict[str, Any]] = []
    if dash.region_variable:
        variables.append({
            "name": "region", "label": "Region", "type": "query", "datasource": DATASOURCE,
            "query": {"query": f"label_values({dash.region_variable}, region)", "refId": "region"},
            "definition": f"label_values({dash.region_variable}, region)",
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        })
    links = [{"title": "Dashboards", "type": "dashboards", "tags": ["compensation-platform"], "asDropdown": True}]
    return {
        "uid": dash.uid, "title": dash.title, "description": dash.description, "tags": list(dash.tags),
        "timezone": "utc", "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "links": links,
        "templating": {"list": variables}, "annotations": {"list": []}, "panels": panels,
    }


def files() -> dict[Path, str]:
    return {OUT / f"{d.uid.removeprefix('comp-').replace('-', '_')}.json": json.dumps(render(d), indent=2) + "\n"
            for d in DASHBOARDS}


def main(argv: list[str]) -> int:
    expected = files()
    if "--check" in argv:
        stale = [path.name for path, text in expected.items() if not path.exists() or path.read_text() != text]
        if stale:
            print(f"stale dashboards (run python deploy/grafana/build_dashboards.py): {', '.join(stale)}")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for path, text in expected.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
