#!/usr/bin/env python3
"""The standard gRPC services of a keylime-rs daemon, seen from grpcio (used by tests/e2e/api.rs).

    api_probe.py check    TARGET --ca F --cert F --key F [--service NAME]
    api_probe.py watch    TARGET --ca F --cert F --key F [--service NAME]
    api_probe.py services TARGET --ca F --cert F --key F
    api_probe.py survey   TARGET --ca F --cert F --key F --service NAME [--foreign SYMBOL]

check prints {"status": "SERVING"} (or {"error": CODE, "details": ...}); watch prints one JSON
line per status as it arrives and {"end": CODE} when the server ends the stream; services prints
{"v1": [...], "v1alpha": [...], "files": {service: file}} listing services through both
reflection versions and resolving each listed service to the file that defines it; survey
does check (for "", for NAME and for an unknown service) and services in one process:
{"whole": STATUS, "named": STATUS, "unknown": CODE, "services": {...}}, and with --foreign the
reflection answer to the file containing SYMBOL ("foreign": CODE, "OK" when it is described).
"""

import argparse
import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from google.protobuf import descriptor_pb2


def read(path):
    with open(path, "rb") as f:
        return f.read()


def emit(doc):
    print(json.dumps(doc), flush=True)


def reflect(channel, version, requests):
    # grpc.reflection.v1 has the same messages as v1alpha under another package name.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=30))


def services(channel):
    doc = {"files": {}}
    for version in ("v1", "v1alpha"):
        [answer] = reflect(channel, version, [reflection_pb2.ServerReflectionRequest(list_services="")])
        doc[version] = sorted(s.name for s in answer.list_services_response.service)
    for name in doc["v1"]:
        [answer] = reflect(
            channel, "v1", [reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)]
        )
        if answer.HasField("error_response"):
            doc["files"][name] = {"error": answer.error_response.error_message}
            continue
        first = descriptor_pb2.FileDescriptorProto.FromString(
            answer.file_descriptor_response.file_descriptor_proto[0]
        )
        doc["files"][name] = first.name
    return doc


def symbol_code(channel, symbol):
    # tonic's reflection ends the stream with the status; others answer with error_response.
    try:
        [answer] = reflect(
            channel, "v1", [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]
        )
    except grpc.RpcError as e:
        return e.code().name
    if not answer.HasField("error_response"):
        return "OK"
    code = answer.error_response.error_code
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["check", "watch", "services", "survey"])
    parser.add_argument("target")
    parser.add_argument("--ca", required=True)
    # Without --cert and --key the client presents no certificate.
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--service", default="")
    parser.add_argument("--foreign")
    args = parser.parse_args()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    with grpc.secure_channel(args.target, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=args.service)
        try:
            if args.action == "check":
                answer = health.Check(request, timeout=30)
                emit({"status": health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)})
            elif args.action == "watch":
                for answer in health.Watch(request, timeout=120):
                    emit({"status": health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)})
                emit({"end": "OK"})
            elif args.action == "services":
                emit(services(channel))
            else:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name
                whole = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                named = health.Check(request, timeout=30)
                try:
                    health.Check(health_pb2.HealthCheckRequest(service="no.such.v1.Service"), timeout=30)
                    unknown = "OK"
                except grpc.RpcError as e:
                    unknown = e.code().name
                doc = {
                    "whole": name(whole.status),
                    "named": name(named.status),
                    "unknown": unknown,
                    "services": services(channel),
                }
                if args.foreign:
                    doc["foreign"] = symbol_code(channel, args.foreign)
                emit(doc)
        except grpc.RpcError as e:
            key = "end" if args.action == "watch" else "error"
            emit({key: e.code().name, "details": e.details()})


if __name__ == "__main__":
    main()
