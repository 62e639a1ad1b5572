#!/usr/bin/env python3
"""Lists the agents enrolled at a keylime-rs verifier, over mutual TLS, with grpcio.

The client stubs are generated from the repository's proto files (proto/) with grpcio-tools
into a temporary directory, so the example needs nothing but:

    pip install grpcio==1.85.1 grpcio-tools==1.85.1

Run it with the deployment CA and a client certificate of role admin or viewer:

    python3 list_agents.py --verifier 127.0.0.1:8881 \
        --ca /var/lib/keylime/cv_ca/cacert.crt \
        --cert /var/lib/keylime/cv_ca/client-cert.crt \
        --key /var/lib/keylime/cv_ca/client-private.pem

It prints one JSON document: {"agents": [{"agent_id": ..., "state": ..., ...}]}.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.join(HERE, "..", "..", "..", "proto")


def load_stubs(proto_dir):
    """Generates the verifier's Python stubs from proto_dir and imports them."""
    out = tempfile.mkdtemp(prefix="keylime-stubs-")
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "keylime/verifier/v1/verifier.proto",
    ])
    if status != 0:
        sys.exit(f"protoc failed on {proto_dir}/keylime/verifier/v1/verifier.proto")
    sys.path.insert(0, out)
    pb2 = importlib.import_module("keylime.verifier.v1.verifier_pb2")
    pb2_grpc = importlib.import_module("keylime.verifier.v1.verifier_pb2_grpc")
    return pb2, pb2_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verifier", required=True, help="HOST:PORT of the verifier")
    parser.add_argument("--ca", required=True, help="the deployment CA (cacert.crt)")
    parser.add_argument("--cert", required=True, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, help="client private key (PEM)")
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="the repository's proto/")
    args = parser.parse_args()

    pb2, pb2_grpc = load_stubs(os.path.abspath(args.proto_dir))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    agents = []
    with grpc.secure_channel(args.verifier, credentials) as channel:
        verifier = pb2_grpc.VerifierStub(channel)
        page_token = ""
        while True:
            try:
                page = verifier.ListAgents(
                    pb2.ListAgentsRequest(page_size=1000, page_token=page_token), timeout=30
                )
            except grpc.RpcError as e:
                # PERMISSION_DENIED: the certificate's role is neither admin nor viewer.
                sys.exit(f"ListAgents: {e.code().name}: {e.details()}")
            for agent in page.agents:
                agents.append({
                    "agent_id": agent.agent_id,
                    "state": pb2.AgentState.Name(agent.state),
                    "attestation_count": agent.attestation_count,
                    "runtime_policy": agent.runtime_policy,
                })
            if not page.next_page_token:
                break
            page_token = page.next_page_token
    json.dump({"agents": agents}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
