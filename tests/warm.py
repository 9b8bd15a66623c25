"""Warm interpreters for the tests that run command lines: ``run`` / ``popen`` / ``torchrun`` here
behave like ``subprocess.run`` / ``subprocess.Popen`` / ``python -m torch.distributed.run`` on a
``[sys.executable, ...]`` command, but each command is a child forked from one waiting interpreter
(the zygote) that has imported torch and torchvision and nothing else. A child is a real process of
its own (its pid can be stopped and killed, it has its own argv, environment, working directory,
stdin/stdout/stderr and exit status), it imports the project afresh, and it saves the 2-4 s that a
new interpreter spends importing torch, torchvision and torch._dynamo (timm imports the latter
through torchvision.ops): 40-50 such commands made up a large part of the suite's time.

What a child shares with the zygote, and so what these tests cannot see (the tests about exactly
that run real interpreters: ``test_environment_variables_are_honoured_in_a_fresh_process``,
``test_derive_seed_is_the_same_in_a_fresh_process_with_another_str_hash_salt``, the wheel test and
``test_python_dash_m_runs_the_cli``): torch's and torchvision's import-time state, the str hash salt,
and the OpenMP thread count read when torch loaded (a child whose environment sets
``OMP_NUM_THREADS`` gets it through ``torch.set_num_threads``). huggingface_hub and timm read their
environment when imported, so they are deliberately not preloaded.

``WSSL_TESTS_FRESH=1`` runs every one of these commands in a real interpreter instead (same
results, slower). Shell scripts get the zygote through ``client_env()``: ``PYTHON`` then names
``tests/warm_python``, a small client that hands its argv, environment, cwd and file descriptors to
the zygote and exits with the child's status (it forwards SIGTERM/SIGINT/SIGHUP, as ``timeout``
sends them).

The zygote understands the interpreter options the tests use (``-u``, ``-B``, ``-m MOD``,
``-c CODE``, ``-`` and a script path); any other command line is exec'd into a real interpreter by
the child, so nothing runs differently, only slower.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

PRELOAD = ("torch", "torchvision", "torchvision.ops")  # not timm or huggingface_hub: they read env at import
CLIENT = Path(__file__).with_name("warm_python")
_HEADER = struct.Struct("!I")


# --------------------------------------------------------------------------- protocol (both sides)

def _send_request(sock: socket.socket, argv: list[str], env: dict, cwd: str, fds: list[int]) -> None:
    payload = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
    socket.send_fds(sock, [_HEADER.pack(len(payload))], fds)
    sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the warm zygote closed the connection")
        data += chunk
    return data


def _recv_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the warm zygote closed the connection")
        data += chunk
    return data.decode().strip()


# --------------------------------------------------------------------------- the zygote

def _serve(path: str) -> None:
    """The zygote's loop: accept requests on the Unix socket ``path``, fork a child per request,
    tell the requester its pid, then its wait status. Ends when its stdin closes (pytest ended)."""
    for name in PRELOAD:
        __import__(name)
    global _ZYGOTE_PYTHONPATH
    _ZYGOTE_PYTHONPATH = _pythonpath(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.02)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1024):
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        if listener in readable:
            conn, _ = listener.accept()
            try:
                header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
                request = json.loads(_recv_exact(conn, _HEADER.unpack(header)[0]))
            except (OSError, ValueError, struct.error):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                conn.close()
                _child(request, fds)  # never returns
            for fd in fds:
                os.close(fd)
            try:
                conn.sendall(f"P {pid}\n".encode())
            except OSError:
                pass
            children[pid] = conn
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"S {status}\n".encode())
                except OSError:
                    pass
                conn.close()


_ZYGOTE_PYTHONPATH: list[str] = []


def _pythonpath(env) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: take the requester's fds as 0/1/2, its environment, cwd and argv, and
    run the command as ``python`` would; exit with its status."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    env, argv = request["env"], request["argv"]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    args = argv[1:]
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    while args and args[0] in ("-u", "-B"):
        unbuffered |= args[0] == "-u"
        sys.dont_write_bytecode |= args[0] == "-B"
        args = args[1:]
    # PYTHONPATH's entries follow sys.path[0], as the interpreter puts them: this command's, not the zygote's
    n = len(_ZYGOTE_PYTHONPATH)
    path_ok = sys.path[1:1 + n] == _ZYGOTE_PYTHONPATH
    if path_ok:
        sys.path[1:1 + n] = _pythonpath(env)
    if not path_ok or not args or (args[0].startswith("-") and args[0] not in ("-m", "-c", "-")) or \
            (args[0] in ("-m", "-c") and len(args) < 2):
        os.execve(argv[0], argv, env)  # not a command line this zygote understands: a real interpreter
    import io

    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=unbuffered,
                                  line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                  line_buffering=True, errors="backslashreplace")
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    threads = env.get("OMP_NUM_THREADS")
    import torch

    torch.set_num_threads(int(threads) if threads and threads.isdigit() else os.cpu_count() or 1)
    code = 0
    try:
        import runpy

        if args[0] == "-m":
            sys.argv = ["-m", *args[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] in ("-c", "-"):
            source = args[1] if args[0] == "-c" else sys.stdin.read()
            sys.argv = [args[0], *args[2 if args[0] == "-c" else 1:]]
            sys.path[0] = ""
            import builtins
            import types

            main = types.ModuleType("__main__")
            main.__builtins__ = builtins
            sys.modules["__main__"] = main
            exec(compile(source, "<string>" if args[0] == "-c" else "<stdin>", "exec"), main.__dict__)
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - print it as the interpreter would
        import traceback

        kind, value, tb = sys.exc_info()
        traceback.print_exception(kind, value, tb.tb_next)  # without this function's frame
        code = 1
    try:
        import atexit
        import threading

        threading._shutdown()  # what the interpreter does at exit: join non-daemon threads,
        atexit._run_exitfuncs()  # then run atexit handlers
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


# --------------------------------------------------------------------------- the requesting side

class _Zygote:
    def __init__(self):
        import subprocess
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="wssl-warm-")
        self.path = os.path.join(self.dir, "zygote.sock")
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=self.dir)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the warm zygote did not start (said {line!r}, exit {self.proc.poll()})")

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            self.proc.kill()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


_ZYGOTE: _Zygote | None = None


def _zygote() -> _Zygote | None:
    global _ZYGOTE
    if os.environ.get("WSSL_TESTS_FRESH") == "1":
        return None
    if _ZYGOTE is None:
        import atexit

        _ZYGOTE = _Zygote()
        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


def client_env() -> dict[str, str]:
    """Environment entries that make a shell script's ``$PYTHON`` a warm interpreter (under
    ``WSSL_TESTS_FRESH=1``: ``PYTHON`` is this interpreter, a real one per command)."""
    zygote = _zygote()
    if zygote is None:
        return {"PYTHON": sys.executable}
    return {"PYTHON": str(CLIENT), "WSSL_WARM_SOCKET": zygote.path, "WSSL_WARM_PYTHON": sys.executable}


class WarmProcess:
    """The part of ``subprocess.Popen``'s interface the tests use, for a zygote's child."""

    def __init__(self, args, env, cwd, stdin, stdout, stderr, text):
        import subprocess

        self.args = list(args)
        self.returncode: int | None = None

        def end(spec, default: int, child_reads: bool):
            """(the child's fd, our end of its pipe as a file or None)"""
            if spec is None:
                return os.dup(default), None
            if spec == subprocess.DEVNULL:
                return os.open(os.devnull, os.O_RDWR), None
            if spec == subprocess.PIPE:
                r, w = os.pipe()
                theirs, ours, mode = (r, w, "w") if child_reads else (w, r, "r")
                return theirs, os.fdopen(ours, mode if text else mode + "b")
            return os.dup(spec if isinstance(spec, int) else spec.fileno()), None

        ends = [end(stdin, 0, True), end(stdout, 1, False)]
        ends.append((os.dup(ends[1][0]), None) if stderr == subprocess.STDOUT else end(stderr, 2, False))
        fds = [fd for fd, _ in ends]
        self.stdin, self.stdout, self.stderr = (handle for _, handle in ends)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(_zygote().path)
            _send_request(self._sock, self.args, dict(os.environ if env is None else env),
                          str(cwd if cwd is not None else os.getcwd()), fds)
            kind, pid = _recv_line(self._sock).split()
            assert kind == "P"
            self.pid = int(pid)
        finally:
            for fd in fds:  # the child has its copies
                os.close(fd)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._sock], [], [], 0)[0]:
            self._finish()
        return self.returncode

    def _finish(self):
        kind, status = _recv_line(self._sock).split()
        assert kind == "S"
        self.returncode = os.waitstatus_to_exitcode(int(status))
        self._sock.close()

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        if self.returncode is None:
            if not select.select([self._sock], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._finish()
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        import threading

        if input is not None and self.stdin is not None:
            self.stdin.write(input)
        if self.stdin is not None:
            self.stdin.close()
        out: dict[str, object] = {}
        readers = [threading.Thread(target=lambda n=n, h=h: out.__setitem__(n, h.read()), daemon=True)
                   for n, h in (("stdout", self.stdout), ("stderr", self.stderr)) if h is not None]
        for t in readers:
            t.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for h in (self.stdout, self.stderr):
            if h is not None:
                h.close()
        return out.get("stdout"), out.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in (self.stdin, self.stdout, self.stderr):
            if h is not None:
                h.close()
        if self.returncode is None:
            self.kill()
            self.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_quietly(pid: int) -> None:
    """SIGKILL without touching the status socket (safe while another thread waits on it)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def popen(args, *, env=None, cwd=None, stdin=None, stdout=None, stderr=None, text=False):
    """``subprocess.Popen(args, ...)`` for ``args = [sys.executable, ...]``, in a warm child."""
    import subprocess

    if _zygote() is None or args[0] != sys.executable:
        return subprocess.Popen(args, env=env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr, text=text)
    return WarmProcess(args, env, cwd, stdin, stdout, stderr, text)


def run(args, *, env=None, cwd=None, capture_output=False, text=False, timeout=None, input=None,
        check=False, stdout=None, stderr=None):
    """``subprocess.run(args, ...)`` for ``args = [sys.executable, ...]``, in a warm child."""
    import subprocess

    if capture_output:
        stdout = stderr = subprocess.PIPE
    proc = popen(args, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else None,
                 stdout=stdout, stderr=stderr, text=text)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def torchrun(nproc: int, command: list[str], *, env=None, cwd=None, timeout=600, text=True):
    """What ``python -m torch.distributed.run --standalone --nproc_per_node N CMD...`` does for a
    one-node CPU run, with warm children: N processes with torchrun's environment (RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID), each with
    PYTHONUNBUFFERED=1 (``-u``, as torchrun starts them). ``command`` is what follows torchrun's
    options (``-m MOD ...`` or ``SCRIPT ...``). Returns a CompletedProcess: the worst exit status,
    and every rank's stdout and stderr, concatenated in rank order (torchrun interleaves them)."""
    import subprocess

    port = free_port()
    base = dict(os.environ if env is None else env)
    procs = []
    for rank in range(nproc):
        rank_env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                        LOCAL_WORLD_SIZE=str(nproc), GROUP_RANK="0", ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(nproc),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="warm",
                        PYTHONUNBUFFERED="1")
        procs.append(popen([sys.executable, "-u", *command], env=rank_env, cwd=cwd, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=text))
    import threading

    results: list = [None] * nproc
    readers = [threading.Thread(target=lambda i=i, p=p: results.__setitem__(i, p.communicate()), daemon=True)
               for i, p in enumerate(procs)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        while any(t.is_alive() for t in readers):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["torchrun", *command], timeout)
            if any(p.returncode not in (None, 0) for p in procs):  # as torchrun: a failed worker ends the others
                for p in procs:
                    if p.returncode is None:
                        _kill_quietly(p.pid)
            time.sleep(0.02)
    finally:
        for p in procs:
            if p.returncode is None:
                _kill_quietly(p.pid)
        for t in readers:
            t.join(10)
    codes = [p.returncode for p in procs]
    outs = [r[0] if r else ("" if text else b"") for r in results]
    errs = [r[1] if r else ("" if text else b"") for r in results]
    worst = max(codes, key=lambda c: (c != 0, abs(c)))
    joiner = "" if text else b""
    return subprocess.CompletedProcess(["torchrun", *command], worst, joiner.join(outs), joiner.join(errs))


# --------------------------------------------------------------------------- the shell client

def _client(args: list[str]) -> int:
    """``tests/warm_python ARGS``: ``python ARGS`` in a zygote child with this process's fds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    real = os.environ["WSSL_WARM_PYTHON"]
    try:
        sock.connect(os.environ["WSSL_WARM_SOCKET"])
    except OSError:
        os.execv(real, [real, *args])  # no zygote (any more): a real interpreter
    _send_request(sock, [real, *args], dict(os.environ), os.getcwd(), [0, 1, 2])
    pid = int(_recv_line(sock).split()[1])

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = os.waitstatus_to_exitcode(int(_recv_line(sock).split()[1]))
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(sys.argv[2])
    elif sys.argv[1] == "client":
        sys.exit(_client(sys.argv[2:]))
