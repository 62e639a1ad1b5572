# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

import json

from ansible_collections.keylime.attest.plugins.modules import runtime_policy


def policy(tmp_path, files, name='p.json'):
    path = tmp_path / name
    path.write_text(json.dumps({'files': files}))
    return str(path)


def mutating(calls):
    return [c for c in calls if any(v in c for v in ('apply', 'delete'))]


def test_apply_then_unchanged_then_check_mode_change_leaves_store_alone(run, tmp_path, capsys):
    src = policy(tmp_path, {'/bin/a': ['sha256:aa'], '/bin/b': ['sha256:bb']})
    first = run(runtime_policy.main, capsys, name='fleet', src=src)
    assert first['changed'] is True and first['entries'] == 2
    again = run(runtime_policy.main, capsys, name='fleet', src=src)
    assert again['changed'] is False
    assert again['digest'] == first['digest']

    changed = policy(tmp_path, {'/bin/a': ['sha256:a2'], '/bin/c': ['sha256:cc']}, 'q.json')
    before = len(mutating(run.calls()))
    check = run(runtime_policy.main, capsys, check_mode=True, diff=True, name='fleet', src=changed)
    assert check['changed'] is True
    assert len(mutating(run.calls())) == before, 'check mode must not apply'
    assert 'added 1: /bin/c' in check['diff']['after']
    assert 'removed 1: /bin/b' in check['diff']['before']
    assert 'changed 1: /bin/a' in check['diff']['after']
    # the store still holds the first policy
    assert run(runtime_policy.main, capsys, name='fleet', src=src)['changed'] is False


def test_argument_list_carries_common_options_and_no_shell(run, tmp_path, capsys):
    src = policy(tmp_path, {'/bin/a': ['sha256:aa']})
    run(runtime_policy.main, capsys, name='fleet', src=src, verifier='v.example:8881',
        registrar='r.example:8891', tls_dir='/etc/keylime/cv_ca', exclude='/tmp/x')
    calls = run.calls()
    assert calls[0][:8] == ['--verifier', 'v.example:8881', '--registrar', 'r.example:8891',
                            '--tls-dir', '/etc/keylime/cv_ca', 'policies', 'runtime']
    assert calls[0][-2:] == ['-o', 'json']
    digest = [c for c in calls if 'digest' in c][0]
    assert digest[digest.index('--exclude') + 1] == '/tmp/x'


def test_content_goes_through_stdin(run, tmp_path, capsys):
    doc = json.dumps({'files': {'/bin/a': ['sha256:aa']}})
    result = run(runtime_policy.main, capsys, name='inline', content=doc)
    assert result['changed'] is True and result['entries'] == 1
    assert ['policies', 'runtime', 'apply', 'inline', '--file', '-'] == run.calls()[-1][0:6]


def test_missing_file_fails_naming_it(run, tmp_path, capsys):
    missing = str(tmp_path / 'missing-policy.json')
    result = run(runtime_policy.main, capsys, name='fleet', src=missing)
    assert result['failed'] is True
    assert 'missing-policy.json' in result['msg']


def test_absent_removes_once(run, tmp_path, capsys):
    src = policy(tmp_path, {'/bin/a': ['sha256:aa']})
    run(runtime_policy.main, capsys, name='fleet', src=src)
    assert run(runtime_policy.main, capsys, name='fleet', state='absent', check_mode=True)['changed'] is True
    assert run(runtime_policy.main, capsys, name='fleet', state='absent')['changed'] is True
    assert run(runtime_policy.main, capsys, name='fleet', state='absent')['changed'] is False


def test_src_and_content_are_exclusive(run, tmp_path, capsys):
    result = run(runtime_policy.main, capsys, name='fleet', src='/x', content='{}')
    assert result['failed'] is True
    assert 'mutually exclusive' in result['msg']
