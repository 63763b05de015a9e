"""A grpcio client cancels its call (RST_STREAM CANCEL, what a proxy sends
when its own client vanishes) in the middle of an interactive session, then
comes back to it with the same session_id. Prints {scenario: result} as JSON.

A cancel is not stdin EOF: the shell (tty) and `cat` (pipes) must still be
running after the cancel and answer the reattached client.
"""

import json
import queue
import threading
import time
import uuid

import grpc

import execd_client

SCENARIOS = ("tty_shell", "pipe_cat")


class Call:
    """One ExecStream call, read by a thread, with a queue of requests."""

    def __init__(self, pb, stub, session_id, start):
        self.pb = pb
        self.session_id = session_id
        self.requests = queue.Queue()
        self.transcript = execd_client.Transcript(pb, session_id)
        self.output = b""
        self.lock = threading.Lock()
        self.send(start_request=start)
        self.call = stub.ExecStream(self._requests(), timeout=60)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self):
        while True:
            msg = self.requests.get()
            if msg is None:
                return
            yield msg

    def _read(self):
        try:
            for msg in self.call:
                self.transcript.record(msg)
                if msg.HasField("output_data"):
                    with self.lock:
                        self.output += msg.output_data.data
        except grpc.RpcError as err:
            self.transcript.rpc_error(err)

    def send(self, **payload):
        self.requests.put(self.pb.ExecMessage(session_id=self.session_id, **payload))

    def wait_for(self, needle, patience=30):
        deadline = time.time() + patience
        while time.time() < deadline:
            with self.lock:
                if needle in self.output:
                    return True
            time.sleep(0.02)
        return False

    def finish(self):
        self.reader.join(60)
        self.requests.put(None)
        return self.transcript


def scenario(pb, stub, container, tty):
    session_id = "cancel-" + uuid.uuid4().hex
    if tty:
        start = pb.ExecStartRequest(container_id=container, command=["sh"], tty=True)
        first, first_seen = b"echo aaa$((1+1))\r", b"aaa2"
        second, second_seen = b"echo bbb$((2+1))\r", b"bbb3"
    else:
        start = pb.ExecStartRequest(container_id=container, command=["cat"])
        first, first_seen = b"one\n", b"one"
        second, second_seen = b"two\n", b"two"
    call = Call(pb, stub, session_id, start)
    call.send(input_data=pb.ExecInputData(data=first))
    result = {"first_seen": call.wait_for(first_seen)}
    call.call.cancel()
    call.finish()
    # Long enough for a wrongly delivered EOF to end `sh` or `cat`.
    time.sleep(1.5)
    back = Call(pb, stub, session_id, start)
    back.send(input_data=pb.ExecInputData(data=second))
    result["second_seen"] = back.wait_for(second_seen)
    if tty:
        back.send(input_data=pb.ExecInputData(data=b"exit 0\r"))
    else:
        back.send(stdin_eof=pb.ExecStdinEof())
    result["reattached"] = back.finish().json()
    return result


def main():
    args = execd_client.parse_args(__doc__)
    pb, pb_grpc = execd_client.stubs()
    stub = pb_grpc.ExecServiceStub(execd_client.channel(args))
    results = {
        "tty_shell": scenario(pb, stub, args.container, tty=True),
        "pipe_cat": scenario(pb, stub, args.container, tty=False),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
