# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

FAKE_KCTL = os.path.join(os.path.dirname(__file__), 'fixtures', 'kctl')


class Runner(object):
    """Runs a module's main() as Ansible would, against the fake kctl, and keeps its state."""

    def __init__(self, tmp_path, monkeypatch):
        self.state = str(tmp_path / 'state.json')
        monkeypatch.setenv('FAKE_KCTL_STATE', self.state)

    def __call__(self, main, capsys, check_mode=False, diff=False, **args):
        args = dict(args, kctl=FAKE_KCTL, _ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                main()
        out, err = capsys.readouterr()
        return json.loads(out)

    def calls(self):
        if not os.path.exists(self.state + '.log'):
            return []
        with open(self.state + '.log') as f:
            return [json.loads(line) for line in f]


@pytest.fixture
def run(tmp_path, monkeypatch):
    return Runner(tmp_path, monkeypatch)
