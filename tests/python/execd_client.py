"""Shared pieces of the interop scripts: arguments, channels, transcripts.

The scripts are an independent client of execd's contract: stubs generated
from proto/exec_service.proto by grpc_tools.protoc (the test does that into a
temp dir and passes it as --stubs), grpcio's own HTTP/2 stack, and default
channel options, exactly as a Python user of the contract would connect.
Each script prints one JSON document on stdout; the Rust test asserts on it,
so a script only records what happened and never decides pass or fail.
"""

import argparse
import sys

import grpc


def parse_args(description, add_arguments=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--stubs", required=True,
                        help="directory holding exec_service_pb2*.py")
    parser.add_argument("--target", required=True,
                        help="gRPC target: host:port or unix:/path")
    parser.add_argument("--container", required=True)
    parser.add_argument("--tls-ca", help="PEM CA that signed the server certificate")
    parser.add_argument("--token", help="bearer token (needs --tls-ca)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    return args


def stubs():
    import exec_service_pb2
    import exec_service_pb2_grpc
    return exec_service_pb2, exec_service_pb2_grpc


def _credentials(args):
    if not args.tls_ca:
        if args.token:
            sys.exit("--token needs --tls-ca: grpcio sends call credentials only over TLS")
        return None
    with open(args.tls_ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    if args.token:
        # Sends `authorization: Bearer <token>` on every call.
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(args.token))
    return creds


def channel(args):
    """A blocking-API channel with default options."""
    creds = _credentials(args)
    if creds is None:
        return grpc.insecure_channel(args.target)
    return grpc.secure_channel(args.target, creds)


def aio_channel(args):
    """An asyncio channel with default options."""
    creds = _credentials(args)
    if creds is None:
        return grpc.aio.insecure_channel(args.target)
    return grpc.aio.secure_channel(args.target, creds)


class Transcript:
    """Everything one ExecStream sent back, in order."""

    def __init__(self, pb, sent_session_id):
        self.pb = pb
        self.sent_session_id = sent_session_id
        self.statuses = []
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.session_ids = set()
        self.rpc = None
        self.cancel = None

    def record(self, msg):
        """Records one server message; returns its status name, if any."""
        self.session_ids.add(msg.session_id)
        kind = msg.WhichOneof("payload")
        if kind == "output_data":
            stderr = msg.output_data.stream_type == self.pb.ExecOutputData.STDERR
            (self.stderr if stderr else self.stdout).extend(msg.output_data.data)
            return None
        if kind == "status":
            name = self.pb.ExecStatusResponse.Status.Name(msg.status.status)
            self.statuses.append({
                "status": name,
                "exit_code": msg.status.exit_code,
                "error_message": msg.status.error_message,
            })
            return name
        self.statuses.append({"status": "UNEXPECTED " + str(kind),
                              "exit_code": 0, "error_message": ""})
        return None

    def rpc_error(self, err):
        self.rpc = {"code": err.code().name, "details": err.details()}

    def json(self):
        return {
            "sent_session_id": self.sent_session_id,
            "session_ids": sorted(self.session_ids),
            "statuses": self.statuses,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "rpc": self.rpc,
            "cancel": self.cancel,
        }
