#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r'''
---
module: agent_info
short_description: Agents as the verifier and the registrar know them
version_added: 0.1.0
description:
  - Returns the agents C(kctl agents list) shows, the verifier's enrolled agents merged with the
    agents registered at the registrar, or one of them.
  - Never changes anything.
options:
  uuid:
    description:
      - Only this agent. When it is neither enrolled nor registered, RV(agents) is empty.
    type: str
extends_documentation_fragment:
  - keylime.attest.common
  - keylime.attest.common.ATTRIBUTES
author:
  - keylime-rs contributors (@keylime-rs)
'''

EXAMPLES = r'''
- name: Read the fleet's attestation state
  keylime.attest.agent_info:
  register: fleet
  delegate_to: localhost
  run_once: true

- name: Every enrolled agent passes
  ansible.builtin.assert:
    that: fleet.agents | selectattr('enrolled', 'defined') | rejectattr('state', 'eq', 'passed') | list | length == 0
  run_once: true

- name: One agent
  keylime.attest.agent_info:
    uuid: d432fbb3-d2f1-4a97-9ef7-75bd81c00000
  register: one
'''

RETURN = r'''
agents:
  description:
    - The agents, each as C(kctl agents list -o json) shows it; see the kctl documentation for every key.
    - An agent that is only registered has RV(agents[].state=not_enrolled) and V(null) settings.
  returned: always
  type: list
  elements: dict
  contains:
    uuid:
      description: The agent id.
      type: str
      sample: d432fbb3-d2f1-4a97-9ef7-75bd81c00000
    state:
      description: C(not_enrolled), C(pending), C(passed), C(failed), C(unreachable) or C(stopped).
      type: str
      sample: passed
    enrolled:
      description: Whether the verifier attests the agent.
      type: bool
      returned: when enrolled
    registered:
      description: Whether the registrar knows the agent.
      type: bool
      returned: when registered
    runtime_policy:
      description: Name of the agent's runtime policy, V(null) for none.
      type: str
    measured_boot_policy:
      description: Name of the agent's measured-boot policy, V(null) for none.
      type: str
    pcr_policy:
      description: Allowed values per PCR, V(null) for none.
      type: dict
    last_verdict:
      description: The last attestation verdict (C(passed), C(findings), C(checked), C(at)), V(null) before the first.
      type: dict
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keylime.attest.plugins.module_utils.kctl import (
    common_argument_spec,
    run_kctl,
)


def main():
    spec = common_argument_spec()
    spec.update(uuid=dict(type='str'))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    rc, listing = run_kctl(module, ['agents', 'list'])
    agents = (listing or {}).get('agents') or []
    uuid = module.params['uuid']
    if uuid is not None:
        agents = [a for a in agents if a.get('uuid') == uuid]
    module.exit_json(changed=False, agents=agents)


if __name__ == '__main__':
    main()
