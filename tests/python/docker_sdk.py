"""docker-py (the Docker SDK for Python) through execd's Docker door.

Usage: docker_sdk.py HOST:PORT CONTAINER. Prints one JSON object with what
the SDK saw; the assertions live in tests/docker_door.rs.
"""

import json
import sys

import docker


def main():
    addr, container = sys.argv[1], sys.argv[2]
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
