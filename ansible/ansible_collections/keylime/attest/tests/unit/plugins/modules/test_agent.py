# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

from ansible_collections.keylime.attest.plugins.modules import agent

UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'


def enrolls(calls):
    return [c for c in calls if 'enroll' in c]


def test_enrol_once_then_converge_only_on_a_difference(run, capsys):
    pcr = {'15': ['00' * 32]}
    assert run(agent.main, capsys, check_mode=True, uuid=UUID, runtime_policy='fleet')['changed'] is True
    assert enrolls(run.calls()) == []
    first = run(agent.main, capsys, uuid=UUID, runtime_policy='fleet', pcr_policy=pcr)
    assert first['changed'] is True and first['state'] == 'pending'
    assert run(agent.main, capsys, uuid=UUID, runtime_policy='fleet', pcr_policy=pcr)['changed'] is False
    assert len(enrolls(run.calls())) == 1
    diff = run(agent.main, capsys, check_mode=True, diff=True, uuid=UUID, runtime_policy='other', pcr_policy=pcr)
    assert diff['changed'] is True
    assert '"other"' in diff['diff']['after'] and '"fleet"' in diff['diff']['before']
    assert len(enrolls(run.calls())) == 1


def test_stopped_and_absent(run, capsys):
    run(agent.main, capsys, uuid=UUID, runtime_policy='fleet')
    stopped = run(agent.main, capsys, uuid=UUID, runtime_policy='fleet', state='stopped')
    assert stopped['changed'] is True and stopped['state'] == 'stopped'
    assert run(agent.main, capsys, uuid=UUID, runtime_policy='fleet', state='stopped')['changed'] is False
    resumed = run(agent.main, capsys, uuid=UUID, runtime_policy='fleet')
    assert resumed['changed'] is True and resumed['state'] == 'pending'
    assert run(agent.main, capsys, uuid=UUID, state='absent')['changed'] is True
    assert run(agent.main, capsys, uuid=UUID, state='absent')['changed'] is False


def test_payload_update_replaces_only_a_changed_payload(run, capsys, tmp_path):
    payload = tmp_path / 'payload'
    payload.mkdir()
    (payload / 'autorun.sh').write_text('echo one\n')
    args = dict(uuid=UUID, runtime_policy='fleet', payload=str(payload))
    run(agent.main, capsys, **args)
    assert '--replace-payload' not in enrolls(run.calls())[-1]
    again = run(agent.main, capsys, **args)
    assert again['changed'] is False, 'a payload is delivered once'

    # The same payload with payload_update: nothing is sent, in check mode or not.
    calls = len(enrolls(run.calls()))
    same = run(agent.main, capsys, payload_update=True, **args)
    assert same['changed'] is False
    assert run(agent.main, capsys, check_mode=True, payload_update=True, **args)['changed'] is False
    assert len(enrolls(run.calls())) == calls

    # A changed file: check mode reports it and sends nothing; then it is delivered, once.
    (payload / 'autorun.sh').write_text('echo two\n')
    check = run(agent.main, capsys, check_mode=True, diff=True, payload_update=True, **args)
    assert check['changed'] is True
    assert 'payload_digest' in check['diff']['after']
    assert len(enrolls(run.calls())) == calls
    update = run(agent.main, capsys, payload_update=True, **args)
    assert update['changed'] is True
    assert '--replace-payload' in enrolls(run.calls())[-1]
    assert run(agent.main, capsys, payload_update=True, **args)['changed'] is False

    # Without payload_update a changed payload is not sent again.
    (payload / 'autorun.sh').write_text('echo three\n')
    assert run(agent.main, capsys, **args)['changed'] is False

    bad = run(agent.main, capsys, uuid=UUID, payload_update=True)
    assert bad['failed'] is True and 'payload_update' in bad['msg']


def test_kctl_errors_fail_with_its_message(run, capsys):
    result = run(agent.main, capsys, uuid='unregistered-1', runtime_policy='fleet')
    assert result['failed'] is True
    assert result['rc'] == 3
    assert result['msg'] == 'kctl: enroll unregistered-1: the registrar does not know this agent'
    assert result['kctl_exit'] == 'not found'
