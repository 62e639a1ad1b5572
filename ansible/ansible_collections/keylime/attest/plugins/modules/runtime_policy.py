#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

DOCUMENTATION = r'''
---
module: runtime_policy
short_description: Store or remove a named runtime (IMA) policy at the verifier
version_added: 0.1.0
description:
  - Stores a runtime policy under a name at the keylime-rs verifier, or removes it.
  - The policy is compared with the stored one by its canonical digest (the one C(kctl policies runtime digest)
    computes offline), so a policy written in another format or with other whitespace but the same
    content is not a change.
  - The diff shows the numbers and the first paths of the entries added, removed and changed, not
    the documents.
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
      - C(native) is this project's JSON, C(keylime) Keylime's runtime policy JSON, C(allowlist) Keylime's flat allowlist.
        A DSSE-signed envelope counts as the JSON format it wraps.
    type: str
    choices: [auto, native, keylime, allowlist]
    default: auto
  exclude:
    description: A Keylime exclude list (one regular expression per line) to merge into the policy.
    type: path
  signing_key:
    description: PEM public key a DSSE-signed policy must verify with; an unsigned policy is then refused.
    type: path
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
- name: Keep the fleet's runtime policy
  keylime.attest.runtime_policy:
    name: fleet
    src: policies/fleet.json
    exclude: policies/exclude.txt
  delegate_to: localhost
  run_once: true

- name: A policy from a Keylime allowlist, verifier given explicitly
  keylime.attest.runtime_policy:
    name: legacy
    content: "{{ lookup('file', 'allowlist.txt') }}"
    format: allowlist
    verifier: verifier.example.org:8881
    tls_dir: /etc/keylime/cv_ca

- name: Remove a policy no agent uses any more
  keylime.attest.runtime_policy:
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
  description: Number of file entries in the policy.
  returned: when O(state=present)
  type: int
  sample: 120
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
        argument_spec=policy_argument_spec(runtime=True),
        mutually_exclusive=[('src', 'content')],
        required_if=[('state', 'present', ('src', 'content'), True)],
        supports_check_mode=True,
    )
    run_policy_module(module, 'runtime')


if __name__ == '__main__':
    main()
