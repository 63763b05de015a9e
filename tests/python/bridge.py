"""The function system's bridge pattern, with grpc.aio.

ONE channel (one HTTP/2 connection) carries every session. Each session puts
its own uuid session_id on every message, sends start_request (instance_id,
tty, terminal size) and a resize straight away, types its input as soon as
STARTED arrives, and cancels the call right after EXITED instead of
half-closing. --sessions of them run concurrently, --rounds times in a row on
the same channel. A watcher records every connectivity state change of the
channel: a connection torn down by a cancel would show up there (and the
next round would silently reconnect), so "survived" means the channel never
left READY.

Prints {"rounds": [[transcript, ...], ...], "states": [...]} as JSON.
"""

import asyncio
import json
import uuid

import grpc

import execd_client

TIMEOUT = 60


def expected_output(n):
    """What session n's shell prints. The typed line itself is echoed by the
    terminal, so the command computes the text instead of containing it."""
    return "hello-%d" % (100 + n)


async def session(pb, stub, args, n):
    session_id = str(uuid.uuid4())
    transcript = execd_client.Transcript(pb, session_id)

    def msg(**payload):
        return pb.ExecMessage(session_id=session_id, **payload)

    call = stub.ExecStream()
    try:
        await call.write(msg(start_request=pb.ExecStartRequest(
            container_id=args.container, command=["sh"], tty=True,
            rows=30, cols=120, instance_id=args.instance)))
        await call.write(msg(resize=pb.ExecResizeRequest(rows=32, cols=110)))
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            status = transcript.record(reply)
            if status == "STARTED":
                await call.write(msg(input_data=pb.ExecInputData(
                    data=b"echo hello-$((100 + %d))\n" % n)))
                await call.write(msg(input_data=pb.ExecInputData(data=b"exit\n")))
            elif status in ("EXITED", "ERROR"):
                break
    except grpc.aio.AioRpcError as err:
        transcript.rpc_error(err)
    # The bridge never half-closes: it cancels once it has the exit.
    transcript.cancel = {"cancelled": call.cancel(), "code": (await call.code()).name}
    return transcript


async def watch_states(channel, states):
    state = channel.get_state()
    states.append(state.name)
    while True:
        await channel.wait_for_state_change(state)
        state = channel.get_state()
        states.append(state.name)


async def main(args):
    pb, pb_grpc = execd_client.stubs()
    channel = execd_client.aio_channel(args)
    await asyncio.wait_for(channel.channel_ready(), TIMEOUT)
    states = []
    watcher = asyncio.create_task(watch_states(channel, states))
    stub = pb_grpc.ExecServiceStub(channel)
    rounds = []
    for _ in range(args.rounds):
        transcripts = await asyncio.wait_for(asyncio.gather(
            *(session(pb, stub, args, n) for n in range(args.sessions))), TIMEOUT)
        rounds.append([t.json() for t in transcripts])
    # Lets a connection loss caused by the last cancels reach the watcher.
    await asyncio.sleep(0.5)
    watcher.cancel()
    await channel.close()
    print(json.dumps({"rounds": rounds, "states": states}))


def add_arguments(parser):
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--instance", default="fn-interop-bridge")


if __name__ == "__main__":
    asyncio.run(main(execd_client.parse_args(__doc__, add_arguments)))
