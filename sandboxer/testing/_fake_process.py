"""The fake engine's processes (`start_process`): each command a thread running a tiny
shell over the contract's vocabulary, with stdin, a terminal, background jobs, signals,
and a process table that the sandbox's /proc/PID/status shows while they live."""

from __future__ import annotations

import itertools
import re
import shlex
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

from .._backend import ExecGenerator, ExitStatus, ProcessChannel, ProcessRequest, TerminalSize
from ._fake import _FakeSandbox, _Shell, _uid

# Signals whose default action is to do nothing.
_IGNORED = {signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG, signal.SIGCONT}
_VARIABLE = re.compile(r"\$(\$|!|\?|[A-Za-z_][A-Za-z0-9_]*)")
_pids = itertools.count(100)
_pids_lock = threading.Lock()


class _Killed(Exception):
    pass


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _statements(script: str) -> list[tuple[str, bool]]:
    """`script` cut at top-level `;`, newlines and `&`: (statement, in the background)."""
    found: list[tuple[str, bool]] = []
    current, depth, quote = "", 0, ""
    for char in script:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif depth == 0 and (char in ";\n" or (char == "&" and not current.endswith(">"))):
            if current.strip():
                found.append((current.strip(), char == "&"))
            current = ""
            continue
        current += char
    if current.strip():
        found.append((current.strip(), False))
    return found


class _Group:
    """One started command and everything it started: shared stdin, output and signals."""

    def __init__(self, sandbox: _FakeSandbox, request: ProcessRequest) -> None:
        self.sandbox = sandbox
        self.request = request
        self.size = request.terminal
        self.changed = threading.Condition()
        self.output: deque[tuple[str, bytes]] = deque()
        self.input = b""
        self.input_closed = False
        self.procs: dict[int, _Proc] = {}

    def emit(self, stream: str, data: bytes) -> None:
        if not data:
            return
        if self.size is not None:  # a terminal: one stream, and newlines as a tty sends them
            stream, data = "stdout", data.replace(b"\n", b"\r\n")
        with self.changed:
            self.output.append((stream, data))
            self.changed.notify_all()

    def feed(self, data: bytes) -> None:
        if self.size is not None:
            self.emit("stdout", data.replace(b"\r", b"\n"))  # the terminal's echo
            data = data.replace(b"\r", b"\n")
        with self.changed:
            if not self.input_closed:
                self.input += data
            self.changed.notify_all()

    def close_input(self) -> None:
        with self.changed:
            self.input_closed = True
            self.changed.notify_all()

    def signal(self, pid: int, signum: int) -> None:
        """`signum` to `pid`; SIGKILL to it and all it started."""
        with self.changed:
            targets = [pid]
            if signum == signal.SIGKILL:
                targets += [p for p in list(self.procs) if self.procs[pid].started(p)]
            for target in targets:
                proc = self.procs.get(target)
                if proc is not None and signum not in _IGNORED and proc.code is None:
                    proc.signalled = signum
            self.changed.notify_all()

    def wait_until(
        self, proc: _Proc, ready: Callable[[], bool], timeout: float | None = None
    ) -> bool:
        with self.changed:
            done = self.changed.wait_for(lambda: ready() or proc.signalled is not None, timeout)
            if proc.signalled is not None:
                raise _Killed
            return done


class _Proc:
    """One fake process: a thread interpreting a script."""

    def __init__(self, group: _Group, parent: int | None, argv: tuple[str, ...]) -> None:
        self.group = group
        self.parent = parent
        with _pids_lock:
            self.pid = next(_pids)
        self.argv = argv
        self.vars: dict[str, str] = {**group.request.exec.env, "?": "0"}
        self.last_background = 0
        self.signalled: int | None = None
        self.code: int | None = None
        with group.changed:
            group.procs[self.pid] = self
        uid = _uid(group.request.exec.user)
        group.sandbox.files[self.status_path] = (
            f"Name:\t{argv[0]}\nState:\tS (sleeping)\nPid:\t{self.pid}\nPPid:\t{parent or 0}\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nCapEff:\t0000000000000000\n"
        ).encode()

    @property
    def status_path(self) -> str:
        return f"/proc/{self.pid}/status"

    def started(self, pid: int) -> bool:
        """Whether `pid` descends from this process."""
        parent = self.group.procs[pid].parent
        while parent is not None:
            if parent == self.pid:
                return True
            parent = self.group.procs[parent].parent
        return False

    def start(self, body: Callable[[], int]) -> None:
        threading.Thread(target=self._run, args=(body,), daemon=True).start()

    def _run(self, body: Callable[[], int]) -> None:
        try:
            code = body()
        except _Exit as end:
            code = end.code
        except _Killed:
            code = 128 + (self.signalled or signal.SIGKILL)
        self.group.sandbox.files.pop(self.status_path, None)
        with self.group.changed:
            self.code = code
            self.group.changed.notify_all()

    # the shell ---------------------------------------------------------------------
    def main(self) -> int:
        argv = self.argv
        if argv[0] in ("sh", "/bin/sh") and len(argv) >= 3 and argv[1] == "-c":
            return self.script(argv[2])
        if argv in (("sh",), ("/bin/sh",)):
            return self.interactive()
        return self.command(list(argv))

    def interactive(self) -> int:
        code = 0
        while True:
            self.group.emit("stdout", b"$ ")
            line = self.read_line()
            if line is None:
                return code
            code = self.script(line)

    def script(self, text: str) -> int:
        code = 0
        for statement, background in _statements(text):
            if background:
                self.last_background = self.child(statement).pid
                code = 0
            else:
                code = self.statement(statement)
            self.vars["?"] = str(code)
        return code

    def child(self, statement: str) -> _Proc:
        inner = statement[1:-1] if statement.startswith("(") else statement
        proc = _Proc(self.group, self.pid, ("sh", "-c", inner))
        proc.start(lambda: proc.script(inner))
        return proc

    def statement(self, text: str) -> int:
        if text.startswith("("):
            proc = self.child(text)
            self.group.wait_until(self, lambda: proc.code is not None)
            return proc.code or 0
        expanded = _VARIABLE.sub(self._value, text)
        return self.command(shlex.split(expanded))

    def _value(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "$":
            return str(self.pid)
        if name == "!":
            return str(self.last_background)
        return self.vars.get(name, "")

    def command(self, words: list[str]) -> int:
        if self.signalled is not None:
            raise _Killed
        builtin = getattr(self, "do_" + words[0], None)
        if builtin is not None:
            code: int = builtin(words[1:])
            return code
        return self.shell(words)

    def shell(self, words: list[str]) -> int:
        """One command of the exec interpreter's vocabulary."""
        words = [w.replace("/proc/self/", f"/proc/{self.pid}/") for w in words]
        out, err, code, _ = _Shell(self.group.sandbox, self.group.request.exec).run(words)
        self.group.emit("stdout", out)
        self.group.emit("stderr", err)
        if words[0] == "exit":
            raise _Exit(code)
        return code

    def read_line(self) -> str | None:
        group = self.group
        group.wait_until(self, lambda: b"\n" in group.input or group.input_closed)
        with group.changed:
            if b"\n" not in group.input:
                return None
            line, _, group.input = group.input.partition(b"\n")
        return line.decode()

    # builtins the exec interpreter has no use for ------------------------------------
    def do_read(self, args: list[str]) -> int:
        line = self.read_line()
        self.vars[args[0]] = line or ""
        return 1 if line is None else 0

    def do_cat(self, args: list[str]) -> int:
        if args:
            return self.shell(["cat", *args])
        group = self.group
        while True:
            group.wait_until(self, lambda: bool(group.input) or group.input_closed)
            with group.changed:
                data, group.input = group.input, b""
            if not data:
                return 0
            group.emit("stdout", data)

    def do_sleep(self, args: list[str]) -> int:
        self.group.wait_until(self, lambda: False, float(args[0]))
        return 0

    def do_wait(self, args: list[str]) -> int:
        group = self.group
        mine = [p for p in list(group.procs.values()) if p.parent == self.pid]
        group.wait_until(self, lambda: all(p.code is not None for p in mine))
        return 0

    def do_tty(self, args: list[str]) -> int:
        if self.group.size is None:
            self.group.emit("stdout", b"not a tty\n")
            return 1
        self.group.emit("stdout", b"/dev/pts/0\n")
        return 0

    def do_stty(self, args: list[str]) -> int:
        size = self.group.size
        if size is None:
            self.group.emit("stderr", b"stty: standard input: Not a tty\n")
            return 1
        self.group.emit("stdout", f"{size.rows} {size.cols}\n".encode())
        return 0

    def do_grep(self, args: list[str]) -> int:
        path = args[1].replace("/proc/self/", f"/proc/{self.pid}/")
        try:
            lines = self.group.sandbox.read(path).splitlines(keepends=True)
        except OSError:
            self.group.emit("stderr", f"grep: {args[1]}: No such file or directory\n".encode())
            return 2
        found = [line for line in lines if args[0].encode() in line]
        self.group.emit("stdout", b"".join(found))
        return 0 if found else 1


class FakeProcess(ProcessChannel):
    def __init__(self, sandbox: _FakeSandbox, request: ProcessRequest) -> None:
        self._group = _Group(sandbox, request)
        root = self._root = _Proc(self._group, None, request.exec.argv)
        self.pid = root.pid
        root.start(root.main)
        self.output = self._relay(request.exec.timeout)

    def _relay(self, timeout: float | None) -> ExecGenerator:
        group, root = self._group, self._root
        deadline = None if timeout is None else time.monotonic() + timeout
        finished = False
        try:
            while True:
                with group.changed:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if not group.changed.wait_for(self._readable, left):
                        break  # past the deadline
                    chunk = group.output.popleft() if group.output else None
                if chunk is None:
                    finished = True
                    return ExitStatus(root.code or 0)
                yield chunk
        finally:
            if not finished:  # a deadline, or a reader that stopped: the tree is killed
                group.signal(root.pid, signal.SIGKILL)
        return ExitStatus(-1, timed_out=True)

    def _readable(self) -> bool:
        return bool(self._group.output) or self._root.code is not None

    def write(self, data: bytes) -> None:
        self._group.feed(data)

    def close_stdin(self) -> None:
        if self._group.size is None:
            self._group.close_input()

    def signal(self, signum: int) -> None:
        self._group.signal(self._root.pid, signum)

    def resize(self, size: TerminalSize) -> None:
        if self._group.size is not None:
            self._group.size = size
