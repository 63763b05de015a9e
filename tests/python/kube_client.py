"""Drives execd's kube door with the official Kubernetes Python client, as
a user would with a real API server: execd is the configured host, the
bearer token goes in as an API key. Prints one JSON report; the assertions
live in tests/it/kube_door.rs.

usage: kube_client.py http://127.0.0.1:PORT TOKEN EXEC_CONTAINER ATTACH_CONTAINER
"""
import json
import sys
import time

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream

addr, token, exec_container, attach_container = sys.argv[1:5]


def api(with_token=True):
    cfg = client.Configuration()
    cfg.host = addr
    if with_token:
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.CoreV1Api(client.ApiClient(cfg))


def exec_ws(command, **kw):
    return stream(
        api().connect_get_namespaced_pod_exec,
        exec_container,
        "default",
        command=command,
        _preload_content=False,
        **kw,
    )


report = {}

# stdout and stderr apart, exit code from the status.
ws = exec_ws(["sh", "-c", "echo out; echo err >&2; exit 3"], stdout=True, stderr=True)
ws.run_forever(timeout=60)
report["split"] = {
    "stdout": ws.read_stdout(),
    "stderr": ws.read_stderr(),
    "returncode": ws.returncode,
}

# The default, preloaded call returns the output.
report["preload"] = stream(
    api().connect_get_namespaced_pod_exec,
    exec_container,
    "default",
    command=["echo", "hello-preload"],
    stdout=True,
    stderr=True,
)

# Interactive stdin (text frames), then v5 close of stdin.
ws = exec_ws(["cat"], stdin=True, stdout=True, stderr=True)
ws.write_stdin("line one\n")
ws.write_stdin("line two\n")
ws.close_channel(0)
ws.run_forever(timeout=60)
report["stdin"] = {"stdout": ws.read_stdout(), "returncode": ws.returncode}

# A terminal, resized through channel 4.
ws = exec_ws(["sh", "-c", "sleep 1; stty size"], stdin=True, stdout=True, tty=True)
ws.write_channel(4, json.dumps({"Width": 111, "Height": 33}))
ws.run_forever(timeout=60)
report["tty"] = ws.read_stdout()

# Attach to PID 1 (a shell), type into it, leave.
ws = stream(
    api().connect_get_namespaced_pod_attach,
    "some-pod",
    "default",
    container=attach_container,
    stdin=True,
    stdout=True,
    tty=True,
    _preload_content=False,
)
ws.write_stdin("echo py-attached-$((6*7))\n")
seen = ""
deadline = time.time() + 30
while time.time() < deadline and "py-attached-42" not in seen:
    ws.update(timeout=1)
    seen += ws.read_stdout(timeout=0) or ""
ws.close()
report["attach"] = seen

# Without the token: 401 before any upgrade.
try:
    stream(
        api(with_token=False).connect_get_namespaced_pod_exec,
        exec_container,
        "default",
        command=["true"],
        stdout=True,
    )
    report["unauthorized"] = 0
except ApiException as e:
    # The client wraps a refused handshake as status 0 with the server's
    # answer ("Handshake status 401 Unauthorized …") in the reason.
    report["unauthorized"] = e.status or str(e.reason)

print(json.dumps(report))
