#!/usr/bin/python3
"""sbx-agent-init [--seccomp FILTER] -- COMMAND...: filter, start COMMAND, reap orphans."""

import ctypes
import os
import signal
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


class Program(ctypes.Structure):
    _fields_ = [("length", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def load_filter(path: str) -> None:
    with open(path, "rb") as source:
        code = source.read()
    program = Program(len(code) // 8, code)  # struct sock_filter is 8 bytes
    libc = ctypes.CDLL(None, use_errno=True)
    if (
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        or libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) != 0
    ):
        sys.exit("sbx-agent-init: " + os.strerror(ctypes.get_errno()))


arguments = sys.argv[1:]
if arguments[0] == "--seccomp":
    load_filter(arguments[1])
    arguments = arguments[2:]
command = arguments[1:]  # after "--"
agent = os.fork()
if agent == 0:
    os.execv(command[0], command)
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda received, _frame: os.kill(agent, received))
while True:
    pid, status = os.wait()
    if pid == agent:  # leaving ends the namespace, and every command in it
        sys.exit(os.waitstatus_to_exitcode(status))
