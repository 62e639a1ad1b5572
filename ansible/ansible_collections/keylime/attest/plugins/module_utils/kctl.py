# -*- coding: utf-8 -*-
# Copyright (c) keylime-rs contributors
# SPDX-License-Identifier: Apache-2.0

"""Running kctl from modules: one argument list, JSON output, exit codes turned into failures."""

from __future__ import annotations

import json

# kctl's exit codes (docs/kctl.md), for messages.
EXIT_MEANING = {
    1: 'evaluated and negative',
    2: 'usage, config or input error',
    3: 'not found',
    4: 'server or transport error',
    5: 'refused in the current state',
}

NOT_FOUND = 3

# Option name -> kctl's global flag.
_GLOBAL_FLAGS = (
    ('config', '--config'),
    ('verifier', '--verifier'),
    ('registrar', '--registrar'),
    ('tls_dir', '--tls-dir'),
)


def common_argument_spec():
    """The options every module takes, to merge into its own argument spec."""
    return dict(
        kctl=dict(type='path'),
        verifier=dict(type='str'),
        registrar=dict(type='str'),
        tls_dir=dict(type='path'),
        config=dict(type='path'),
    )


def kctl_command(module, args):
    """The full argument list: binary, global flags from the module's options, ARGS, -o json."""
    binary = module.params.get('kctl') or module.get_bin_path('kctl', required=True)
    argv = [binary]
    for option, flag in _GLOBAL_FLAGS:
        value = module.params.get(option)
        if value:
            argv.extend([flag, value])
    argv.extend(args)
    argv.extend(['-o', 'json'])
    return argv


def error_line(stderr):
    """kctl's one-line error: the last non-empty stderr line (progress may come before it)."""
    lines = [line.strip() for line in (stderr or '').splitlines() if line.strip()]
    return lines[-1] if lines else ''


def run_kctl(module, args, data=None, allow=(0,)):
    """Runs kctl with ARGS; returns (rc, parsed JSON). Exit codes in ALLOW are returned (their JSON
    is None when stdout is empty); any other exit ends the module with kctl's message."""
    argv = kctl_command(module, args)
    rc, out, err = module.run_command(
        argv,
        data=data,
        binary_data=True,
        environ_update=dict(LC_ALL='C'),
    )
    if rc not in allow:
        line = error_line(err)
        meaning = EXIT_MEANING.get(rc, 'exit %d' % rc)
        module.fail_json(
            msg=line or 'kctl %s failed (%s)' % (' '.join(args[:3]), meaning),
            rc=rc,
            stderr=err,
            stdout=out,
            cmd=argv,
            kctl_exit=meaning,
        )
    if not out.strip():
        return rc, None
    try:
        return rc, json.loads(out)
    except ValueError as e:
        module.fail_json(
            msg='kctl %s printed something that is not JSON: %s' % (' '.join(args[:3]), e),
            rc=rc,
            stdout=out,
            stderr=err,
            cmd=argv,
        )
