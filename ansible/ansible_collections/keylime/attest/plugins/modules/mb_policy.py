#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r'''
---
module: mb_policy
short_description: Store or remove a named measured-boot policy at the verifier
version_added: 0.1.0
description:
  - Stores a measured-boot policy under a name at the keylime-rs verifier, or removes it.
  - The policy is compared with the stored one by its canonical digest (the one C(kctl policies mb digest)
    computes offline), so a policy written in another format or with other whitespace but the same
    content is not a change.
  - The diff shows the numbers and the first entries added, removed and changed, not the documents.
options:
  name:
    description: Name of the policy at the verifier; agents refer to it by this name.
    type: str
    required: true
  src:
    description:
      - Policy file on the host the module runs on (the controller with C(delegate_to) C(localhost)).
      - Mutually exclusive with O(content).
    type: path
  content:
    description:
      - The policy document itself, for example from C(lookup('file', ...)).
      - Mutually exclusive with O(src).
    type: str
  format:
    description:
      - The format the document must be in; C(auto) accepts any of them.
      - C(native) is this project's JSON (what C(kctl policies mb generate) writes), C(keylime) Keylime's
        measured-boot reference state.
    type: str
    choices: [auto, native, keylime]
    default: auto
  state:
    description:
      - V(present) stores the policy, V(absent) removes it.
      - The verifier refuses to remove a policy an enrolled agent uses.
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
- name: Keep the measured-boot policy generated from a known-good event log
  keylime.attest.mb_policy:
    name: laptops
    src: policies/laptops-mb.json
  delegate_to: localhost
  run_once: true

- name: Remove a measured-boot policy
  keylime.attest.mb_policy:
    name: old
    state: absent
'''

RETURN = r'''
name:
  description: Name of the policy.
  returned: always
  type: str
  sample: fleet
digest:
  description: SHA-256 of the canonical policy document, lowercase hex.
  returned: when O(state=present)
  type: str
  sample: 396a411cfe92191b1d5a7d9b00032815cac6f923182738084b495853c1e2887c
entries:
  description: Number of entries in the policy (firmware, boot loaders, kernels, command lines, db and dbx rules, pinned PCRs).
  returned: when O(state=present)
  type: int
  sample: 9
agents:
  description: Number of enrolled agents that use the policy (0 when it was not stored yet).
  returned: when O(state=present)
  type: int
  sample: 3
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.keylime.attest.plugins.module_utils.policy import (
    policy_argument_spec,
    run_policy_module,
)


def main():
    module = AnsibleModule(
        argument_spec=policy_argument_spec(runtime=False),
        mutually_exclusive=[('src', 'content')],
        required_if=[('state', 'present', ('src', 'content'), True)],
        supports_check_mode=True,
    )
    run_policy_module(module, 'mb')


if __name__ == '__main__':
    main()
