#!/usr/bin/env python3
"""Checks tarp's Grafana dashboard without a Grafana (Debian has none to install).

1. The JSON against the parts of Grafana's dashboard model a dashboard needs to load:
   uid, title, schemaVersion, unique panel ids, every panel on the 24-column grid without
   overlapping another, a known panel type, a Prometheus datasource that is the
   dashboard's `datasource` variable, and every target with a refId unique in its panel
   and a PromQL expression.
2. With --prometheus URL: every expression, its Grafana variables replaced as Grafana
   would ($node by .*, $__rate_interval by 5s), runs against a real Prometheus through
   its HTTP API; each must be accepted, and (with --require-data) each panel must return
   at least one series.

Usage: check-dashboard.py DASHBOARD.json [--prometheus http://127.0.0.1:9090] [--require-data]
Exit 0 when every check passed; otherwise one line per problem and exit 1.
"""
import argparse
import json
import sys
import urllib.parse
import urllib.request

PANEL_TYPES = {"timeseries", "stat", "gauge", "state-timeline", "table", "bargauge", "row", "text", "heatmap"}


def structure(d):
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            problems.append(f"dashboard: no {key!r}")
    if problems:
        return problems
    variables = {v.get("name") for v in d["templating"].get("list", [])}
    if "datasource" not in variables:
        problems.append("templating: no 'datasource' variable")
    ids, cells = set(), {}
    for p in d["panels"]:
        where = f"panel {p.get('id')} ({p.get('title', '?')})"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if p.get("type") not in PANEL_TYPES:
            problems.append(f"{where}: unknown type {p.get('type')!r}")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            problems.append(f"{where}: gridPos needs integer h, w, x, y")
            continue
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"{where}: gridPos outside the 24 columns")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{where}: overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p.get("id")
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        ds = p.get("datasource", {})
        if ds.get("type") != "prometheus" or ds.get("uid") != "${datasource}":
            problems.append(f"{where}: datasource must be the prometheus ${{datasource}} variable")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{where}: refIds missing or repeated")
        for t in targets:
            if not t.get("expr", "").strip():
                problems.append(f"{where}: target {t.get('refId')} has no expr")
    return problems


def expand(expr):
    return expr.replace("$__rate_interval", "5s").replace("$node", ".*")


def query(prometheus, expr):
    url = prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    return body


def evaluate(d, prometheus, require_data):
    problems, ran, with_data = [], 0, 0
    for p in d["panels"]:
        if p.get("type") == "row":
            continue
        series = 0
        for t in p.get("targets", []):
            body = query(prometheus, expand(t["expr"]))
            ran += 1
            if body.get("status") != "success":
                problems.append(f"panel {p['id']} ({p['title']}) {t['refId']}: {body.get('error', body)}")
                continue
            series += len(body["data"]["result"])
        if series:
            with_data += 1
        elif require_data:
            problems.append(f"panel {p['id']} ({p['title']}): no series")
    return problems, ran, with_data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dashboard")
    ap.add_argument("--prometheus")
    ap.add_argument("--require-data", action="store_true")
    a = ap.parse_args()
    with open(a.dashboard) as f:
        d = json.load(f)
    problems = structure(d)
    panels = [p for p in d.get("panels", []) if p.get("type") != "row"]
    note = f"{len(panels)} panels, structure ok"
    if not problems and a.prometheus:
        more, ran, with_data = evaluate(d, a.prometheus, a.require_data)
        problems += more
        note += f"; {ran} PromQL expressions accepted by Prometheus, {with_data} of {len(panels)} panels with data"
    for p in problems:
        print(f"check-dashboard: {p}")
    if problems:
        sys.exit(1)
    print(f"check-dashboard: {note}")


if __name__ == "__main__":
    main()
