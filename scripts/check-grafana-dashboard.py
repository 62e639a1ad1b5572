#!/usr/bin/env python3
"""Checks a Grafana dashboard against Grafana's published dashboard schema.

Usage: check-grafana-dashboard.py DASHBOARD.json

Schema: the dashboard is decoded with grafana-foundation-sdk (the dashboard, panel and
Prometheus query models generated from Grafana's schema; scripts/install-deps.sh installs a
pinned version) and encoded again; every field of the file must come back unchanged, so a
misspelt or misplaced field is reported with its path. Every panel's queries must
decode as Prometheus queries.

Whether the queried metrics are the ones the daemons export is checked against running daemons
by the end-to-end test operations::the_grafana_dashboard_shows_exactly_the_metrics_the_daemons_export,
not here: a list kept in this script would drift from the daemons.

Exit 0 when everything holds, 1 with one line per problem on stderr otherwise, 2 on bad usage.
"""

import argparse
import json
import sys

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard


def differences(original, decoded, path="$"):
    """Paths where `original` is not carried by `decoded` (extra defaults in `decoded` are fine)."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            return [f"{path}: expected an object, the schema has {type(decoded).__name__}"]
        problems = []
        for key, value in original.items():
            if key not in decoded:
                problems.append(f"{path}.{key}: not a field the schema knows here")
            else:
                problems.extend(differences(value, decoded[key], f"{path}.{key}"))
        return problems
    if isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            return [f"{path}: the list does not survive decoding"]
        problems = []
        for i, (a, b) in enumerate(zip(original, decoded)):
            problems.extend(differences(a, b, f"{path}[{i}]"))
        return problems
    if original != decoded:
        return [f"{path}: {original!r} decodes as {decoded!r}"]
    return []


def panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check(path):
    with open(path, encoding="utf-8") as f:
        original = json.load(f)
    register_default_plugins()
    problems = []
    decoded = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    problems.extend(differences(original, decoded))

    for panel in panels(original):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('title')!r} query {target.get('refId')}"
            query = cogruntime.dataquery_from_json(target, "prometheus")
            if not isinstance(query, prometheus.Dataquery):
                problems.append(f"{where}: not a Prometheus query")
            if not target.get("expr"):
                problems.append(f"{where}: no expr")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard")
    args = parser.parse_args()
    try:
        problems = check(args.dashboard)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{args.dashboard}: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{args.dashboard}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
