"""One channel, one session after another: echo, stdin EOF, tty resize and
an ERROR, with the blocking grpcio API. Prints {scenario: transcript} as JSON.

The request side of every session stays open until the response ends, so
what ends `cat` is the stdin_eof message, not a half-close.
"""

import json
import queue
import uuid

import grpc

import execd_client

SCENARIOS = ("echo", "stdin_eof", "tty_resize", "error")

# Bytes for `cat`, without a final newline: they must come back untouched.
CAT_INPUT = b"line one\nline two\x00\xff end"


def run_session(pb, stub, start, on_started=None, timeout=60):
    session_id = str(uuid.uuid4())
    requests = queue.Queue()
    transcript = execd_client.Transcript(pb, session_id)

    def send(**payload):
        requests.put(pb.ExecMessage(session_id=session_id, **payload))

    def request_stream():
        while True:
            msg = requests.get()
            if msg is None:
                return
            yield msg

    send(start_request=start)
    try:
        for msg in stub.ExecStream(request_stream(), timeout=timeout):
            if transcript.record(msg) == "STARTED" and on_started:
                on_started(send)
    except grpc.RpcError as err:
        transcript.rpc_error(err)
    finally:
        requests.put(None)
    return transcript


def main():
    args = execd_client.parse_args(
        __doc__,
        lambda p: p.add_argument("--only", action="append", choices=SCENARIOS))
    pb, pb_grpc = execd_client.stubs()
    stub = pb_grpc.ExecServiceStub(execd_client.channel(args))
    container = args.container
    results = {}
    for name in args.only or SCENARIOS:
        if name == "echo":
            t = run_session(pb, stub, pb.ExecStartRequest(
                container_id=container, command=["echo", "hi"]))
        elif name == "stdin_eof":
            def feed(send):
                send(input_data=pb.ExecInputData(data=CAT_INPUT))
                send(stdin_eof=pb.ExecStdinEof())
            t = run_session(pb, stub, pb.ExecStartRequest(
                container_id=container, command=["cat"]), feed)
        elif name == "tty_resize":
            # The command reads its size only after the resize had time
            # to reach the terminal inside the container.
            t = run_session(pb, stub, pb.ExecStartRequest(
                container_id=container, command=["sh", "-c", "sleep 1; stty size"],
                tty=True, rows=24, cols=80),
                lambda send: send(resize=pb.ExecResizeRequest(rows=40, cols=100)))
        else:
            t = run_session(pb, stub, pb.ExecStartRequest(
                container_id="execd-interop-no-such-container", command=["true"]))
        results[name] = t.json()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
