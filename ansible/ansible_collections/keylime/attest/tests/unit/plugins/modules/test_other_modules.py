# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

import json

from ansible_collections.keylime.attest.plugins.modules import agent, agent_info, mb_policy, registration

UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'


def test_mb_policy_applies_once_and_diffs_entries(run, tmp_path, capsys):
    src = tmp_path / 'mb.json'
    src.write_text(json.dumps({'kernels': [{'sha256': 'aa'}], 'hash_alg': 'sha256'}))
    first = run(mb_policy.main, capsys, name='laptops', src=str(src))
    assert first['changed'] is True
    assert any(c[:3] == ['policies', 'mb', 'apply'] for c in run.calls())
    assert run(mb_policy.main, capsys, name='laptops', src=str(src))['changed'] is False
    src.write_text(json.dumps({'kernels': [{'sha256': 'bb'}], 'hash_alg': 'sha256'}))
    check = run(mb_policy.main, capsys, name='laptops', src=str(src), check_mode=True, diff=True)
    assert check['changed'] is True
    assert 'added 1: kernels: {"sha256": "bb"}' in check['diff']['after']
    assert 'removed 1: kernels: {"sha256": "aa"}' in check['diff']['before']


def test_registration_reads_and_removes(run, capsys):
    with open(run.state, 'w') as f:
        json.dump({'runtime': {}, 'mb': {}, 'agents': {},
                   'registrar': {UUID: {'uuid': UUID, 'agent_id': UUID, 'registration_count': 1}}}, f)
    info = run(registration.main, capsys, uuid=UUID)
    assert info['changed'] is False and info['registered'] is True
    assert info['record']['registration_count'] == 1
    assert run(registration.main, capsys, uuid=UUID, state='absent', check_mode=True)['changed'] is True
    assert run(registration.main, capsys, uuid=UUID, state='absent')['changed'] is True
    gone = run(registration.main, capsys, uuid=UUID, state='absent')
    assert gone['changed'] is False and gone['registered'] is False and gone['record'] is None


def test_agent_info_lists_and_filters(run, capsys):
    assert run(agent_info.main, capsys)['agents'] == []
    run(agent.main, capsys, uuid=UUID, runtime_policy='fleet')
    run(agent.main, capsys, uuid='other', runtime_policy='fleet')
    everything = run(agent_info.main, capsys)
    assert sorted(a['uuid'] for a in everything['agents']) == sorted(['other', UUID])
    one = run(agent_info.main, capsys, uuid=UUID)
    assert [a['uuid'] for a in one['agents']] == [UUID] and one['changed'] is False
