"""The function system's own clients, unchanged, against execd's /terminal/ws:
`yr exec` / `yr cp` (yr/cli/exec.py from PyPI openyuanrong-sdk) and the
sandbox SDK's PTY transport (yr_sandbox/_pty_transport.py from PyPI
openyuanrong-sandbox), both loaded by path from the installed wheels (the
`yr` package itself pulls in much more). Prints one JSON document of what
happened; the assertions live in tests/it/terminal_door.rs.

Usage: yr_clients.py --target HOST:PORT --container C [--token T]
       [--only SCENARIO]...
"""

import argparse
import asyncio
import fcntl
import hashlib
import importlib.util
import json
import os
import pty
import select
import struct
import subprocess
import sys
import sysconfig
import tempfile
import termios
import time
from pathlib import Path

SCENARIOS = ("exec_plain", "exec_tty", "cp", "cp_missing", "pty_sdk")


def load(relative, name):
    for key in ("platlib", "purelib"):
        path = Path(sysconfig.get_paths()[key]) / relative
        if path.exists():
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    sys.exit(f"{relative} is not installed (pip install -r tests/python/requirements.txt)")


def yr_exec():
    return load("yr/cli/exec.py", "yr_cli_exec")


def connection(yr, args, **extra):
    host, port = args.target.rsplit(":", 1)
    return yr.ExecConnection(host=host, port=port, user="default", token=args.token, **extra)


def child_exec(args):
    """Runs `yr exec` the way yrcli does (in a child, under a pty or not)."""
    yr = yr_exec()
    invocation = yr.ExecInvocation(
        instance=args.container, command=args.command, allocate_tty=args.tty,
        stdin=args.tty, rows=None, cols=None)
    asyncio.run(yr.run_client(connection(yr, args, quiet=not args.tty), invocation))


def exec_plain(args):
    out = subprocess.run(
        [sys.executable, __file__, "--child-exec", "--target", args.target,
         "--container", args.container, "--command", "echo hello world"]
        + (["--token", args.token] if args.token else []),
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    return {"stdout": out.stdout.decode(errors="replace"),
            "stderr": out.stderr.decode(errors="replace"), "rc": out.returncode}


def container_has(container, needle):
    out = subprocess.run(["docker", "exec", container, "ps", "-o", "args"],
                         capture_output=True, timeout=30)
    return any(needle in line and "ps -o" not in line
               for line in out.stdout.decode(errors="replace").splitlines())


class PtyChild:
    """`yr exec -t` in a real terminal of the given size."""

    def __init__(self, args, rows, cols):
        master, slave = pty.openpty()
        self.set_size(slave, rows, cols)
        cmd = [sys.executable, __file__, "--child-exec", "--tty", "--target", args.target,
               "--container", args.container, "--command", "sh"]
        if args.token:
            cmd += ["--token", args.token]
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, close_fds=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.master = master
        self.seen = b""

    @staticmethod
    def set_size(fd, rows, cols):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_for(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                if not data:
                    return
                self.seen += data

    def type_until(self, line, needle, patience=20):
        deadline = time.time() + patience
        while time.time() < deadline:
            os.write(self.master, line)
            self.read_for(1.0)
            if needle in self.seen:
                return True
        return False


def exec_tty(args):
    child = PtyChild(args, 30, 100)
    result = {}
    child.read_for(1.0)
    result["first_size"] = child.type_until(b"stty size\r", b"30 100")
    # The kernel sends SIGWINCH to the client, which sends RESIZE.
    child.set_size(child.master, 40, 120)
    result["resized"] = child.type_until(b"stty size\r", b"40 120")
    marker = f"sleep {args.marker}"
    os.write(child.master, f"{marker}\r".encode())
    deadline = time.time() + 20
    while time.time() < deadline and not container_has(args.container, marker):
        time.sleep(0.1)
    result["sleep_started"] = container_has(args.container, marker)
    # Ctrl+]: yr exec's detach key closes the connection.
    os.write(child.master, b"\x1d")
    try:
        result["client_rc"] = child.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        result["client_rc"] = None
    deadline = time.time() + 20
    while time.time() < deadline and container_has(args.container, marker):
        time.sleep(0.1)
    result["sleep_killed"] = not container_has(args.container, marker)
    result["transcript"] = child.seen.decode(errors="replace")[-2000:]
    os.close(child.master)
    return result


def tree_digest(root):
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cp(args):
    yr = yr_exec()
    conn = connection(yr, args)
    work = Path(tempfile.mkdtemp(prefix="yrcp-"))
    small = work / "small.txt"
    small.write_text("hello from yr cp\n")
    big = work / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    tree = work / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "mid.bin").write_bytes(os.urandom(100_000))
    (tree / "a" / "b" / "deep.txt").write_text("deep\n")
    results = {}
    for streaming in (False, True):
        mode = "streaming" if streaming else "plain"
        up = yr.copy_to_remote_streaming if streaming else yr.copy_to_remote
        down = yr.copy_from_remote_streaming if streaming else yr.copy_from_remote
        remote_dir = f"/tmp/yrcp-{args.marker}-{mode}"
        for name, local in (("small", small), ("big", big), ("tree", tree)):
            remote = f"{remote_dir}/{name}"
            back = work / f"back-{mode}-{name}"
            entry = {}
            try:
                asyncio.run(up(conn, yr.CopyRequest(args.container, str(local), remote)))
                asyncio.run(down(conn, yr.CopyRequest(args.container, str(back), remote)))
                if local.is_dir():
                    entry["same"] = tree_digest(local) == tree_digest(back)
                    entry["files"] = len(tree_digest(back))
                else:
                    entry["same"] = (hashlib.sha256(local.read_bytes()).hexdigest()
                                     == hashlib.sha256(back.read_bytes()).hexdigest())
            except Exception as err:  # recorded, asserted on by the test
                entry["error"] = f"{type(err).__name__}: {err}"
            results[f"{mode}_{name}"] = entry
    return results


def cp_missing(args):
    yr = yr_exec()
    conn = connection(yr, args)
    local = Path(tempfile.mkdtemp(prefix="yrcp-")) / "f.txt"
    local.write_text("x\n")
    try:
        asyncio.run(yr.copy_to_remote(
            conn, yr.CopyRequest("execd-no-such-instance", str(local), "/tmp/f.txt")))
        return {"error": None}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


def pty_sdk(args):
    pt = load("yr_sandbox/_pty_transport.py", "yr_pty_transport")
    host = args.target
    results = {}

    def session(command, script):
        out = bytearray()
        uri = pt._build_pty_uri(server=host, use_tls=False, instance_id=args.container,
                                token=args.token or "unused", command=command, rows=24, cols=80)
        conn = pt._PtyConnection(uri, ssl_context=None, rows=24, cols=80,
                                 on_data=out.extend, on_done=lambda: None)
        try:
            conn.start(timeout=30)
            script(conn)
            code = conn.wait(timeout=30)
            return {"session_id": conn.session_id, "exit_code": code,
                    "output": bytes(out).decode(errors="replace")}
        except Exception as err:
            return {"error": f"{type(err).__name__}: {err}",
                    "output": bytes(out).decode(errors="replace")}
        finally:
            conn.close()

    def resize_and_answer(conn):
        conn.resize(rows=33, cols=101)
        conn.send_stdin(b"hello\n")

    results["exit_code"] = session(
        ["sh", "-c", "read line; echo got:$line; stty size; exit 7"], resize_and_answer)

    def type_then_close(conn):
        conn.send_stdin(b"abc\n")
        conn.close_stdin()

    results["close_stdin"] = session(["sh", "-c", "cat; exit 3"], type_then_close)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--token")
    parser.add_argument("--marker", default=str(os.getpid()))
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    parser.add_argument("--child-exec", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tty", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--command", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_exec:
        child_exec(args)
        return
    scenarios = {"exec_plain": exec_plain, "exec_tty": exec_tty, "cp": cp,
                 "cp_missing": cp_missing, "pty_sdk": pty_sdk}
    print(json.dumps({name: scenarios[name](args) for name in args.only or SCENARIOS}))


if __name__ == "__main__":
    main()
