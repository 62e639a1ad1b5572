#!/usr/bin/env python3
"""Offline stand-in for the get-pip.py bootstrap that ansible-test downloads to create its
virtual environments (sanity --local, units --venv). The download host is not reachable from
every build machine; ensurepip ships the same pip. install-deps.sh copies this file to
~/.ansible/test/cache/get_pip_<version>.py, where ansible-test looks before downloading."""

import os
import runpy
import sys


def main():
    # get-pip.py takes pip install's arguments plus a few of its own that pip does not know.
    args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
    saved = dict(os.environ)
    import ensurepip

    # ensurepip points PIP_CONFIG_FILE at /dev/null and sets other variables while it runs;
    # put the environment back so that the pip install below reads /etc/pip.conf as usual.
    ensurepip.bootstrap(upgrade=True)
    os.environ.clear()
    os.environ.update(saved)
    if args:
        sys.argv = ["pip", "install"] + args
        runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
