#!/usr/bin/env python3
"""Generates docs/grafana/fila-dashboard.json (Grafana 10+, Prometheus data
source). Edit the panels here and re-run; the JSON is committed so users
can import it directly."""
import json
import pathlib

Q = 'messaging_destination_name=~"$queue"'
panels = []


def row(title):
    panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": len(panels) * 8}})


def panel(title, exprs, unit="short", kind="timeseries", width=12, description=""):
    x = 0 if not panels or panels[-1]["type"] == "row" or panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"] + width > 24 \
        else panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"]
    panels.append({
        "type": kind, "title": title, "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend} for i, (e, legend) in enumerate(exprs)],
        "gridPos": {"h": 8, "w": width, "x": x, "y": len(panels) * 8},
    })


row("Throughput and depth")
panel("Messages per second", [
    (f'sum by (messaging_destination_name) (rate(fila_messages_enqueued_total{{{Q}}}[$__rate_interval]))', "enqueued {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_leased_total{{{Q}}}[$__rate_interval]))', "leased {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_acked_total{{{Q}}}[$__rate_interval]))', "acked {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_nacked_total{{{Q}}}[$__rate_interval]))', "nacked {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_expired_total{{{Q}}}[$__rate_interval]))', "expired {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_dead_lettered_total{{{Q}}}[$__rate_interval]))', "dead-lettered {{messaging_destination_name}}"),
    (f'sum by (messaging_destination_name) (rate(fila_messages_returned_total{{{Q}}}[$__rate_interval]))', "returned unsent {{messaging_destination_name}}"),
], unit="ops")
panel("Depth", [
    (f'fila_queue_ready{{{Q}}}', "ready {{messaging_destination_name}}"),
    (f'fila_queue_in_flight{{{Q}}}', "in flight {{messaging_destination_name}}"),
    (f'fila_queue_delayed{{{Q}}}', "delayed {{messaging_destination_name}}"),
    (f'fila_queue_dead_letter_depth{{{Q}}}', "dead letters {{messaging_destination_name}}"),
])
row("Fairness")
panel("Deliveries per second, busiest keys", [
    (f'topk(10, sum by (fila_fairness_key) (rate(fila_fairness_deliveries_total{{{Q}}}[$__rate_interval])))', "{{fila_fairness_key}}"),
], unit="ops", description="Keys over the series cap are summed under _other.")
panel("Key $key: actual share vs fair share", [
    (f'avg_over_time(fila_fairness_share_actual_ratio{{{Q}, fila_fairness_key=~"$key"}}[1m])', "actual {{fila_fairness_key}}"),
    (f'fila_fairness_share_fair_ratio{{{Q}, fila_fairness_key=~"$key"}}', "fair {{fila_fairness_key}}"),
], unit="percentunit", description="Fair share is 0 while the key has nothing ready: it is not owed anything then.")
panel("Active keys and DRR rounds", [
    (f'fila_fairness_active_keys{{{Q}}}', "active keys {{messaging_destination_name}}"),
    (f'rate(fila_drr_rounds_total{{{Q}}}[$__rate_interval])', "rounds/s {{messaging_destination_name}}"),
])
panel("Delivery latency (ready to delivered)", [
    (f'histogram_quantile(0.5, sum by (le) (rate(fila_delivery_latency_seconds_bucket{{{Q}}}[$__rate_interval])))', "p50"),
    (f'histogram_quantile(0.99, sum by (le) (rate(fila_delivery_latency_seconds_bucket{{{Q}}}[$__rate_interval])))', "p99"),
], unit="s")
row("Throttling")
panel("Throttle passes and blocks per second", [
    ('sum by (fila_throttle_key) (rate(fila_throttle_passes_total[$__rate_interval]))', "passes {{fila_throttle_key}}"),
    ('sum by (fila_throttle_key) (rate(fila_throttle_blocks_total[$__rate_interval]))', "blocks {{fila_throttle_key}}"),
], unit="ops")
panel("Tokens in bucket", [('fila_throttle_tokens', "{{fila_throttle_key}}")])
row("Lua scripts")
panel("Script call time p99", [
    (f'histogram_quantile(0.99, sum by (le, fila_script_hook) (rate(fila_script_duration_seconds_bucket{{{Q}}}[$__rate_interval])))', "{{fila_script_hook}}"),
], unit="s")
panel("Script failures per second and breaker state", [
    (f'sum by (fila_script_hook, error_type) (rate(fila_script_failures_total{{{Q}}}[$__rate_interval]))', "{{fila_script_hook}} {{error_type}}"),
    (f'fila_script_breaker_state{{{Q}}}', "breaker {{fila_script_hook}} (0 closed, 1 half-open, 2 open)"),
])
row("Server")
panel("gRPC calls per second by method and status", [
    ('sum by (rpc_method, rpc_response_status_code) (rate(rpc_server_call_duration_seconds_count[$__rate_interval]))', "{{rpc_method}} {{rpc_response_status_code}}"),
], unit="ops")
panel("Storage commit time", [
    ('histogram_quantile(0.5, sum by (le) (rate(fila_storage_commit_duration_seconds_bucket[$__rate_interval])))', "p50"),
    ('histogram_quantile(0.99, sum by (le) (rate(fila_storage_commit_duration_seconds_bucket[$__rate_interval])))', "p99"),
], unit="s")

for i, p in enumerate(panels):
    p["id"] = i + 1

dashboard = {
    "title": "Fila",
    "uid": "fila-broker",
    "description": "Fila message broker: throughput, depth, per-key fairness, throttles, Lua health, latency.",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "tags": ["fila", "messaging"],
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "queue", "type": "query", "label": "Queue", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(fila_queue_ready, messaging_destination_name)", "refId": "queue"},
         "refresh": 2},
        {"name": "key", "type": "query", "label": "Fairness key", "includeAll": True, "multi": True,
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": 'label_values(fila_fairness_deliveries_total{messaging_destination_name=~"$queue"}, fila_fairness_key)', "refId": "key"},
         "refresh": 2},
    ]},
    "panels": panels,
}
out = pathlib.Path(__file__).resolve().parent.parent / "docs" / "grafana" / "fila-dashboard.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
