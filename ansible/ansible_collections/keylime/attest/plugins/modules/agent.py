#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r'''
---
module: agent
short_description: Enrol an agent at the verifier and keep its policies
version_added: 0.1.0
description:
  - Enrols a registered agent for attestation with the named policies, converges the settings of an
    enrolled agent, stops (pauses) it, or unenrols it.
  - The settings are compared with what C(kctl agents show) reports; kctl is asked to change
    something only when they differ, so a second run reports no change.
  - A payload is delivered once, when the agent is enrolled. Enrolling an enrolled agent again does
    not send it again, even when O(payload) changed. With O(payload_update=true) the payload is
    delivered again (a fresh bootstrap key; it runs again after the next passing attestation) when
    it differs from the one delivered last.
  - Payloads are compared by digest. The verifier records the digest of a delivered payload with
    the enrolment (C(payload_digest) of C(kctl agents show)); the module computes the digest of
    O(payload) and O(cert) offline with C(kctl agents payload-digest). The digest covers the
    files (paths, contents, executable bits) and whether O(cert) is set, not the certificate,
    which is issued afresh on each delivery. An agent enrolled without a recorded digest gets
    the payload once more.
options:
  uuid:
    description: The agent id, as the agent registered it.
    type: str
    required: true
  runtime_policy:
    description: Name of a runtime policy stored at the verifier (see M(keylime.attest.runtime_policy)); unset for none.
    type: str
  mb_policy:
    description: Name of a measured-boot policy stored at the verifier (see M(keylime.attest.mb_policy)); unset for none.
    type: str
  pcr_policy:
    description:
      - "Allowed values per PCR: a dict of PCR number to a list of hex values (Keylime's C(tpm_policy)), or this
        project's format, the same dict under the key C(pcrs)."
      - Unset for none.
    type: dict
  payload:
    description:
      - A zip file, or a directory whose files are packed, delivered to the agent encrypted; C(autorun.sh) in it runs
        on the agent after the first passing attestation. A path on the host the module runs on.
    type: path
  cert:
    description: V(default) adds a certificate and key for the agent, issued by the deployment CA, to the payload.
    type: str
    choices: [default]
  payload_update:
    description:
      - Deliver O(payload) (and O(cert)) to an enrolled agent when it differs from the payload delivered
        last, replacing it. Needs O(payload) or O(cert).
    type: bool
    default: false
  contact:
    description: The agent's address for the payload delivery, C(HOST:PORT); default its contact at the registrar.
    type: str
  wait:
    description:
      - After enrolling or changing the agent, wait until its first verdict; a failed attestation or
        O(timeout) fails the task.
    type: bool
    default: false
  timeout:
    description: Seconds to wait with O(wait).
    type: float
    default: 60
  state:
    description:
      - V(present) enrols the agent (and resumes it when it was stopped), V(stopped) pauses its attestation,
        V(absent) unenrols it. The registration is kept; see M(keylime.attest.registration).
    type: str
    choices: [present, stopped, absent]
    default: present
extends_documentation_fragment:
  - keylime.attest.common
  - keylime.attest.common.ATTRIBUTES
author:
  - keylime-rs contributors (@keylime-rs)
'''

EXAMPLES = r'''
- name: Enrol every host of the play from the controller
  keylime.attest.agent:
    uuid: "{{ keylime_agent_uuid }}"
    runtime_policy: fleet
    pcr_policy:
      "15": ["0000000000000000000000000000000000000000000000000000000000000000"]
    payload: payloads/{{ inventory_hostname }}
    cert: default
    wait: true
    timeout: 120
  delegate_to: localhost

- name: Deliver the payload again where its files changed since the last delivery
  keylime.attest.agent:
    uuid: "{{ keylime_agent_uuid }}"
    runtime_policy: fleet
    payload: payloads/{{ inventory_hostname }}
    cert: default
    payload_update: true
  delegate_to: localhost

- name: Pause attestation during maintenance
  keylime.attest.agent:
    uuid: "{{ keylime_agent_uuid }}"
    state: stopped
  delegate_to: localhost

- name: Unenrol
  keylime.attest.agent:
    uuid: "{{ keylime_agent_uuid }}"
    state: absent
  delegate_to: localhost
'''

RETURN = r'''
agent:
  description:
    - The agent as C(kctl agents show -o json) prints it after the change (C(uuid), C(state), C(runtime_policy),
      C(measured_boot_policy), C(pcr_policy), C(attestation_count), C(last_verdict), C(key_delivered),
      C(payload_digest), ...);
      V(null) when it is not enrolled.
  returned: always
  type: dict
state:
  description: The agent's attestation state (C(pending), C(passed), C(failed), C(unreachable), C(stopped)), V(null) when not enrolled.
  returned: always
  type: str
  sample: passed
'''

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keylime.attest.plugins.module_utils.kctl import (
    NOT_FOUND,
    common_argument_spec,
    run_kctl,
)


def normalize_pcr_policy(policy):
    """A PCR policy as kctl shows it: {"<pcr>": [lowercase hex, ...]}, None for none."""
    if not policy:
        return None
    if 'pcrs' in policy:
        policy = policy['pcrs']
    out = {}
    for pcr, values in policy.items():
        if pcr in ('mask', 'hash_alg'):
            continue
        if not isinstance(values, list):
            values = [values]
        out[str(int(pcr))] = sorted(str(v).lower() for v in values)
    return out or None


def wanted_settings(params):
    return dict(
        runtime_policy=params['runtime_policy'] or None,
        measured_boot_policy=params['mb_policy'] or None,
        pcr_policy=normalize_pcr_policy(params['pcr_policy']),
    )


def current_settings(agent):
    pcr = agent.get('pcr_policy')
    return dict(
        runtime_policy=agent.get('runtime_policy'),
        measured_boot_policy=agent.get('measured_boot_policy'),
        pcr_policy={k: sorted(v) for k, v in pcr.items()} if pcr else None,
    )


def settings_text(settings):
    if settings is None:
        return ''
    return json.dumps(settings, indent=2, sort_keys=True) + '\n'


def payload_args(params):
    args = []
    if params['payload']:
        args += ['--payload', params['payload']]
    if params['cert']:
        args += ['--cert', params['cert']]
    return args


def enroll_args(params, replace_payload):
    args = ['agents', 'enroll', params['uuid']]
    if params['runtime_policy']:
        args += ['--runtime-policy', params['runtime_policy']]
    if params['mb_policy']:
        args += ['--mb-policy', params['mb_policy']]
    if params['pcr_policy']:
        args += ['--pcr-policy', json.dumps(params['pcr_policy'], sort_keys=True)]
    args += payload_args(params)
    if params['contact']:
        args += ['--agent', params['contact']]
    if replace_payload:
        args.append('--replace-payload')
    if params['wait']:
        args += ['--wait', '--timeout', str(params['timeout'])]
    return args


def after_verb(done, agent):
    """The agent as C(kctl agents stop|resume -o json) prints it: its fields and C(changed)."""
    if isinstance(done, dict) and done.get('uuid'):
        return done
    return agent


def main():
    spec = common_argument_spec()
    spec.update(
        uuid=dict(type='str', required=True),
        runtime_policy=dict(type='str'),
        mb_policy=dict(type='str'),
        pcr_policy=dict(type='dict'),
        payload=dict(type='path'),
        cert=dict(type='str', choices=['default']),
        payload_update=dict(type='bool', default=False),
        contact=dict(type='str'),
        wait=dict(type='bool', default=False),
        timeout=dict(type='float', default=60.0),
        state=dict(type='str', default='present', choices=['present', 'stopped', 'absent']),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    uuid = p['uuid']
    if p['payload_update'] and not (p['payload'] or p['cert']):
        module.fail_json(msg='agent %s: payload_update needs payload or cert' % uuid)

    rc, current = run_kctl(module, ['agents', 'show', uuid], allow=(0, NOT_FOUND))
    if rc == NOT_FOUND:
        current = None
    before = current_settings(current) if current is not None else None
    changed = False
    agent = current

    if p['state'] == 'absent':
        if current is not None:
            changed = True
            if not module.check_mode:
                rc, done = run_kctl(module, ['agents', 'unenroll', uuid])
                changed = bool(done and done.get('changed'))
            agent = None
        after = None
    else:
        after = wanted_settings(p)
        replace = False
        if p['payload_update'] and current is not None:
            # Offline: the digest the verifier would record for this payload.
            rc, digest = run_kctl(module, ['agents', 'payload-digest'] + payload_args(p))
            wanted_digest = (digest or {}).get('payload_digest')
            replace = current.get('payload_digest') != wanted_digest
            before['payload_digest'] = current.get('payload_digest')
            after['payload_digest'] = wanted_digest
        if current is None or before != after or replace:
            changed = True
            if not module.check_mode:
                # kctl exits 1 when --wait ends failed or timed out: report the agent, then fail.
                rc, agent = run_kctl(module, enroll_args(p, replace), allow=(0, 1))
                changed = bool(agent.get('changed'))
                if rc == 1:
                    module.fail_json(
                        msg='agent %s did not pass attestation within %s s (state %s)' % (
                            uuid, p['timeout'], agent.get('state')),
                        agent=agent, changed=changed)
        state = (agent or {}).get('state')
        if p['state'] == 'stopped' and state != 'stopped':
            changed = True
            if not module.check_mode:
                rc, done = run_kctl(module, ['agents', 'stop', uuid])
                agent = after_verb(done, agent)
        elif p['state'] == 'present' and state == 'stopped':
            changed = True
            if not module.check_mode:
                rc, done = run_kctl(module, ['agents', 'resume', uuid])
                agent = after_verb(done, agent)
        if after is not None:
            after = dict(after, state=p['state'])
        if before is not None:
            before = dict(before, state='stopped' if current.get('state') == 'stopped' else 'present')

    if isinstance(agent, dict):
        agent.pop('changed', None)
    result = dict(changed=changed, agent=agent, state=(agent or {}).get('state'))
    if module._diff:
        result['diff'] = dict(before=settings_text(before), after=settings_text(after),
                              before_header='agent %s' % uuid, after_header='agent %s' % uuid)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
