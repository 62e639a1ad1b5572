# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations


class ModuleDocFragment(object):
    # The options every module of the collection passes to kctl. Set them once for a play with
    # module_defaults and the group keylime.attest.all.
    DOCUMENTATION = r'''
options:
  kctl:
    description:
      - Path of the C(kctl) binary on the host the module runs on.
      - When not set, C(kctl) is looked up in E(PATH).
    type: path
  verifier:
    description:
      - Verifier address, C(HOST) or C(HOST:PORT); passed to kctl as C(--verifier).
      - When not set, kctl takes C(verifier_ip) and C(verifier_port) from its tenant configuration.
    type: str
  registrar:
    description:
      - Registrar address, C(HOST) or C(HOST:PORT); passed to kctl as C(--registrar).
      - When not set, kctl takes C(registrar_ip) and C(registrar_port) from its tenant configuration.
    type: str
  tls_dir:
    description:
      - Directory holding the deployment CA certificate and the admin client certificate and key;
        passed to kctl as C(--tls-dir).
    type: path
  config:
    description:
      - Tenant configuration file kctl reads instead of the system one; passed to kctl as C(--config).
    type: path
notes:
  - The module runs C(kctl ... -o json) on the host it runs on, usually the controller
    (C(delegate_to) C(localhost)) or a management host, and relies on its exit codes.
  - Set the common options once with C(module_defaults) and the group C(group/keylime.attest.all).
requirements:
  - C(kctl) of keylime-rs on the host the module runs on.
'''

    ATTRIBUTES = r'''
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
'''
