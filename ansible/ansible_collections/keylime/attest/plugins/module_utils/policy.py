# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

"""What runtime_policy and mb_policy share: read the stored policy, compute the canonical form of
the wanted one offline (kctl policies KIND digest), apply or delete only when they differ."""

from __future__ import annotations

import json
import os

from ansible_collections.keylime.attest.plugins.module_utils.kctl import (
    NOT_FOUND,
    common_argument_spec,
    run_kctl,
)

# How many paths of each kind the diff names.
DIFF_PATHS = 10

# Formats a runtime policy may be given in; kctl detects it, the module checks it when one is named.
# A DSSE envelope wraps either JSON format.
_FORMAT_ACCEPTS = {
    'native': ('native', 'signed'),
    'keylime': ('keylime', 'signed'),
    'allowlist': ('allowlist',),
}


def policy_argument_spec(runtime):
    spec = common_argument_spec()
    spec.update(
        name=dict(type='str', required=True),
        src=dict(type='path'),
        content=dict(type='str'),
        format=dict(type='str', default='auto', choices=['auto', 'native', 'keylime', 'allowlist']
                    if runtime else ['auto', 'native', 'keylime']),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    if runtime:
        spec.update(
            exclude=dict(type='path'),
            signing_key=dict(type='path', no_log=False),
        )
    return spec


def _entries(kind, document):
    """A policy document as a map of entry name -> value, to compare two of them."""
    if not isinstance(document, dict):
        return {}
    if kind == 'runtime':
        out = {}
        for path, digests in (document.get('files') or {}).items():
            out[path] = sorted(digests)
        for name, digests in (document.get('buffers') or {}).items():
            out['buffer:' + name] = sorted(digests)
        for pattern in document.get('excludes') or []:
            out['exclude:' + pattern] = True
        for key, value in document.items():
            if key not in ('files', 'buffers', 'excludes'):
                out['(' + key + ')'] = value
        return out
    out = {}
    for key, value in document.items():
        if isinstance(value, list):
            for item in value:
                out['%s: %s' % (key, json.dumps(item, sort_keys=True))] = True
        else:
            out['(' + key + ')'] = value
    return out


def entry_changes(kind, before, after):
    """Entries added, removed and changed between two canonical documents."""
    old = _entries(kind, before)
    new = _entries(kind, after)
    added = sorted(k for k in new if k not in old)
    removed = sorted(k for k in old if k not in new)
    changed = sorted(k for k in new if k in old and new[k] != old[k])
    return dict(added=added, removed=removed, changed=changed)


def _summary(label, info, names):
    lines = ['digest: %s' % info['digest'], 'entries: %s' % info['entries']]
    for what, paths in names:
        if paths:
            shown = ', '.join(paths[:DIFF_PATHS])
            more = ' and %d more' % (len(paths) - DIFF_PATHS) if len(paths) > DIFF_PATHS else ''
            lines.append('%s %d: %s%s' % (what, len(paths), shown, more))
    return '\n'.join(lines) + '\n'


def policy_diff(kind, name, current, wanted):
    """Ansible's diff: counts and the first names of the entries added, removed and changed, not
    the documents themselves (policies hold thousands of entries)."""
    header = '%s policy %s' % (kind, name)
    if current is None and wanted is None:
        return dict(before='', after='')
    if wanted is None:
        return dict(before=_summary(header, current, []), after='',
                    before_header=header, after_header=header + ' (absent)')
    if current is None:
        return dict(before='', after=_summary(header, wanted, []),
                    before_header=header + ' (absent)', after_header=header)
    changes = entry_changes(kind, current.get('document'), wanted.get('document'))
    return dict(
        before=_summary(header, current, [('removed', changes['removed']), ('changed', changes['changed'])]),
        after=_summary(header, wanted, [('added', changes['added']), ('changed', changes['changed'])]),
        before_header=header,
        after_header=header,
    )


def _source(module, kind):
    """The --file argument and the data for kctl's stdin."""
    if module.params['content'] is not None:
        return '-', module.params['content'].encode('utf-8')
    src = module.params['src']
    # kctl names the file too, but say it before anything else runs.
    if not os.path.isfile(src):
        module.fail_json(msg='%s: no such file (src of %s policy %s)' % (src, kind, module.params['name']))
    return src, None


def run_policy_module(module, kind):
    """The whole module: KIND is 'runtime' or 'mb'."""
    p = module.params
    name = p['name']
    rc, current = run_kctl(module, ['policies', kind, 'show', name], allow=(0, NOT_FOUND))
    if rc == NOT_FOUND:
        current = None
    result = dict(changed=False, name=name)

    if p['state'] == 'absent':
        if current is not None:
            result['changed'] = True
            if not module.check_mode:
                rc, deleted = run_kctl(module, ['policies', kind, 'delete', name])
                result['changed'] = bool(deleted and deleted.get('changed'))
        if module._diff:
            result['diff'] = policy_diff(kind, name, current, None)
        module.exit_json(**result)

    path, data = _source(module, kind)
    extra = []
    if kind == 'runtime':
        if p['exclude']:
            extra += ['--exclude', p['exclude']]
        if p['signing_key']:
            extra += ['--signing-key', p['signing_key']]
    rc, wanted = run_kctl(module, ['policies', kind, 'digest', '--file', path] + extra, data=data)
    if p['format'] != 'auto':
        accepted = _FORMAT_ACCEPTS.get(p['format'], (p['format'],))
        if wanted['format'] not in accepted:
            module.fail_json(msg='%s: format %s expected, the document is %s' % (
                'content' if path == '-' else path, p['format'], wanted['format']))

    changed = current is None or current.get('digest') != wanted['digest']
    stored = current
    if changed and not module.check_mode:
        rc, stored = run_kctl(module, ['policies', kind, 'apply', name, '--file', path] + extra, data=data)
        changed = bool(stored.get('changed'))
    result['changed'] = changed
    result['digest'] = wanted['digest']
    result['entries'] = wanted['entries']
    result['agents'] = (stored or {}).get('agents', 0) if stored is not None else 0
    if module._diff:
        result['diff'] = policy_diff(kind, name, current, wanted)
    module.exit_json(**result)
