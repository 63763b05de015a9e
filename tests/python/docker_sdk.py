"""docker-py (the Docker SDK for Python) through execd's Docker door.

Usage: docker_sdk.py HOST:PORT CONTAINER [every-byte N]. Prints one JSON
object with what the SDK saw; the assertions live in tests/it/docker_door.rs.

`every-byte N` runs N short execs with `Container.exec_run` each way: with a
terminal, and without one demultiplexed (`demux=True`). Both read the
hijacked socket under http.client's buffered reader (`_read_from_socket`),
so output that arrived together with the `101` headers would be lost.
"""

import json
import sys

import docker


def every_byte(addr, container, n):
    """What exec_run returned that was not what the command printed."""
    client = docker.DockerClient(base_url=f"tcp://{addr}", version="auto", timeout=60)
    target = client.containers.get(container)
    wrong = []
    for i in range(n):
        tty = target.exec_run(["echo", f"tty-{i}"], tty=True)
        if (tty.exit_code, tty.output) != (0, f"tty-{i}\r\n".encode()):
            wrong.append({"tty": True, "i": i, "exit_code": tty.exit_code, "output": repr(tty.output)})
        split = target.exec_run(["sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit 5"], demux=True)
        expected = (5, (f"out-{i}\n".encode(), f"err-{i}\n".encode()))
        if (split.exit_code, split.output) != expected:
            wrong.append({"tty": False, "i": i, "exit_code": split.exit_code, "output": repr(split.output)})
    client.close()
    return {"execs": 2 * n, "wrong": wrong}


def main():
    addr, container = sys.argv[1], sys.argv[2]
    if sys.argv[3:4] == ["every-byte"]:
        print(json.dumps(every_byte(addr, container, int(sys.argv[4]))))
        return
    client = docker.APIClient(base_url=f"tcp://{addr}", version="auto", timeout=60)
    created = client.exec_create(
        container,
        ["sh", "-c", "echo out; echo err >&2; exit 3"],
        environment={"GREETING": "hi"},
    )
    out, err = client.exec_start(created["Id"], demux=True)
    inspected = client.exec_inspect(created["Id"])
    high = client.exec_create(container, ["sh", "-c", "echo $GREETING"], environment={"GREETING": "hi"})
    greeting = client.exec_start(high["Id"])
    # A resize at once after the start of a tty exec, then a line typed:
    # the real engine answers `33 101`.
    sized = client.exec_create(container, ["sh", "-c", "read x; stty size"], stdin=True, tty=True)
    sock = client.exec_start(sized["Id"], tty=True, socket=True)
    client.exec_resize(sized["Id"], height=33, width=101)
    raw = sock._sock if hasattr(sock, "_sock") else sock
    raw.sendall(b"go\n")
    seen = b""
    while True:
        chunk = raw.recv(4096)
        if not chunk:
            break
        seen += chunk
    raw.close()
    print(
        json.dumps(
            {
                "api_version": client.api_version,
                "stdout": (out or b"").decode(),
                "stderr": (err or b"").decode(),
                "exit_code": inspected["ExitCode"],
                "running": inspected["Running"],
                "greeting": greeting.decode(),
                "resized": seen.decode("utf-8", "replace"),
            }
        )
    )


if __name__ == "__main__":
    main()
