#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r'''
---
module: registration
short_description: Read or remove an agent's registration at the registrar
version_added: 0.1.0
description:
  - Agents register themselves; this module reads the registrar's record of one, or removes it
    (the agent id is then free, and the agent registers again when it restarts).
options:
  uuid:
    description: The agent id.
    type: str
    required: true
  state:
    description:
      - V(present) returns the record and changes nothing (agents register themselves); V(absent) removes the registration.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - keylime.attest.common
  - keylime.attest.common.ATTRIBUTES
author:
  - keylime-rs contributors (@keylime-rs)
'''

EXAMPLES = r'''
- name: The registrar's record of an agent
  keylime.attest.registration:
    uuid: d432fbb3-d2f1-4a97-9ef7-75bd81c00000
  register: reg

- name: Forget a decommissioned machine
  keylime.attest.registration:
    uuid: d432fbb3-d2f1-4a97-9ef7-75bd81c00000
    state: absent
'''

RETURN = r'''
registered:
  description: Whether the registrar knows the agent (before the removal, with V(absent)).
  returned: always
  type: bool
  sample: true
record:
  description:
    - The registrar's record as C(kctl registrar show -o json) prints it (C(uuid), C(contact_ip), C(contact_port),
      C(ek_public), C(ek_certificate_verified), C(ak_public), C(registration_count), ...); V(null) when not registered.
  returned: always
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keylime.attest.plugins.module_utils.kctl import (
    NOT_FOUND,
    common_argument_spec,
    run_kctl,
)


def main():
    spec = common_argument_spec()
    spec.update(
        uuid=dict(type='str', required=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    uuid = module.params['uuid']
    rc, record = run_kctl(module, ['registrar', 'show', uuid], allow=(0, NOT_FOUND))
    if rc == NOT_FOUND:
        record = None
    result = dict(changed=False, registered=record is not None, record=record)
    if module.params['state'] == 'absent' and record is not None:
        result['changed'] = True
        if not module.check_mode:
            rc, deleted = run_kctl(module, ['registrar', 'delete', uuid])
            result['changed'] = bool(deleted and deleted.get('changed'))
        if module._diff:
            result['diff'] = dict(before='registered: %s\n' % uuid, after='')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
