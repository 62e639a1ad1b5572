#!/usr/bin/env python3
"""Checks a Grafana dashboard against Grafana's published dashboard schema and the metrics the
daemons export.

Usage: check-grafana-dashboard.py DASHBOARD.json [--metrics EXPOSITION.txt ...]

Schema: the dashboard is decoded with grafana-foundation-sdk (the dashboard, panel and
Prometheus query models generated from Grafana's schema; scripts/install-deps.sh installs a
pinned version) and encoded again; every field of the file must come back unchanged, so a
misspelt or misplaced field is reported with its path. Every panel's queries must
decode as Prometheus queries.

Metrics: with --metrics (Prometheus text expositions scraped from the daemons), every metric a
query names must be exported, and every exported metric family must be queried by some panel.

Exit 0 when everything holds, 1 with one line per problem on stderr otherwise, 2 on bad usage.
"""

import argparse
import json
import re
import sys

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard

METRIC = re.compile(r"\b(keylime_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


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


def exported(expositions):
    """Metric families and sample names in Prometheus text expositions."""
    families, samples = set(), set()
    for text in expositions:
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                families.add(line.split()[2])
            elif line and not line.startswith("#"):
                samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return families, samples | families


def check(path, metric_files):
    with open(path, encoding="utf-8") as f:
        original = json.load(f)
    register_default_plugins()
    problems = []
    decoded = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    problems.extend(differences(original, decoded))

    queried = set()
    for panel in panels(original):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('title')!r} query {target.get('refId')}"
            query = cogruntime.dataquery_from_json(target, "prometheus")
            if not isinstance(query, prometheus.Dataquery):
                problems.append(f"{where}: not a Prometheus query")
            if not target.get("expr"):
                problems.append(f"{where}: no expr")
            queried.update((where, name) for name in METRIC.findall(target.get("expr", "")))
    if not queried:
        problems.append("no query names a keylime_ metric")

    if metric_files:
        texts = []
        for name in metric_files:
            with open(name, encoding="utf-8") as f:
                texts.append(f.read())
        families, names = exported(texts)
        if not families:
            problems.append(f"{', '.join(metric_files)}: no metric families")
        for where, name in sorted(queried):
            if name not in names:
                problems.append(f"{where}: {name} is not exported by the daemons")
        used = {n for _, n in queried}
        used |= {n[: -len(s)] for n in used for s in HISTOGRAM_SUFFIXES if n.endswith(s)}
        for family in sorted(families - used):
            problems.append(f"exported metric {family} is on no panel")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dashboard")
    parser.add_argument("--metrics", action="append", default=[])
    args = parser.parse_args()
    try:
        problems = check(args.dashboard, args.metrics)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{args.dashboard}: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{args.dashboard}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
