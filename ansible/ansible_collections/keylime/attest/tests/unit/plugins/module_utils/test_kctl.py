# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

from ansible_collections.keylime.attest.plugins.module_utils import kctl
from ansible_collections.keylime.attest.plugins.module_utils.policy import entry_changes


def test_error_line_is_the_last_non_empty_line():
    err = 'kctl: fetching\n\nkctl: /tmp/p.json: No such file or directory (os error 2)\n  \n'
    assert kctl.error_line(err) == 'kctl: /tmp/p.json: No such file or directory (os error 2)'
    assert kctl.error_line('') == ''
    assert kctl.error_line(None) == ''


def test_common_options_become_global_flags():
    class Module(object):
        params = dict(kctl='/opt/kctl', config='/etc/t.conf', verifier='v:8881', registrar=None, tls_dir='/d')

        def get_bin_path(self, *a, **kw):
            raise AssertionError('the kctl option wins over PATH')

    argv = kctl.kctl_command(Module(), ['agents', 'show', 'u'])
    assert argv == ['/opt/kctl', '--config', '/etc/t.conf', '--verifier', 'v:8881', '--tls-dir', '/d',
                    'agents', 'show', 'u', '-o', 'json']


def test_entry_changes_of_runtime_documents():
    before = {'files': {'/a': ['sha256:1'], '/b': ['sha256:2']}, 'excludes': ['^/tmp']}
    after = {'files': {'/a': ['sha256:9'], '/c': ['sha256:3']}, 'excludes': ['^/tmp', '^/var']}
    changes = entry_changes('runtime', before, after)
    assert changes == dict(added=['/c', 'exclude:^/var'], removed=['/b'], changed=['/a'])
