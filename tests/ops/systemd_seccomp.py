"""Exec a command under the seccomp filters systemd installs for the unit's
MemoryDenyWriteExecute=yes and RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6.

systemd (src/shared/seccomp-util.c) refuses, for MemoryDenyWriteExecute, with EPERM: ``mmap``
with PROT_WRITE and PROT_EXEC together, ``mprotect``/``pkey_mprotect`` adding PROT_EXEC, and
``shmat`` with SHM_EXEC; for RestrictAddressFamilies, ``socket``/``socketpair`` of any other
family with EAFNOSUPPORT (so glibc's resolver falls back from netlink as it does under the unit).
This script sets NO_NEW_PRIVS (the unit's NoNewPrivileges=yes, also required for an unprivileged
filter), installs those filters as one classic BPF program, and execs ``argv[1:]``: the filter
survives execve, so the agent runs as under the unit.

    python systemd_seccomp.py /path/to/anomaly-agent run --config agent.toml

x86-64 only (the syscall numbers and the audit arch below); exits 2 elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
NR_MMAP, NR_MPROTECT, NR_SHMAT, NR_SOCKET, NR_SOCKETPAIR, NR_PKEY_MPROTECT = 9, 10, 30, 41, 53, 329
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
RET_ALLOW = 0x7FFF0000
RET_EPERM = 0x00050000 | 1  # SECCOMP_RET_ERRNO | EPERM
RET_EAFNOSUPPORT = 0x00050000 | 97
LD_W_ABS, JEQ_K, AND_K, RET_K = 0x20, 0x15, 0x54, 0x06
OFF_NR, OFF_ARCH, OFF_ARG0_LOW, OFF_ARG2_LOW = 0, 4, 16, 16 + 2 * 8  # struct seccomp_data, little-endian


class SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter)))


def _program() -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions; jumps are relative to the next instruction."""

    def masked(mask: int, deny_if: int) -> list[tuple[int, int, int, int]]:
        # args[2] & mask == deny_if -> EPERM, else allow
        return [
            (LD_W_ABS, 0, 0, OFF_ARG2_LOW),
            (AND_K, 0, 0, mask),
            (JEQ_K, 0, 1, deny_if),
            (RET_K, 0, 0, RET_EPERM),
            (RET_K, 0, 0, RET_ALLOW),
        ]

    mmap_block = masked(PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC)
    mprotect_block = masked(PROT_EXEC, PROT_EXEC)
    shmat_block = masked(SHM_EXEC, SHM_EXEC)
    socket_block = [
        (LD_W_ABS, 0, 0, OFF_ARG0_LOW),
        (JEQ_K, 3, 0, AF_UNIX),
        (JEQ_K, 2, 0, AF_INET),
        (JEQ_K, 1, 0, AF_INET6),
        (RET_K, 0, 0, RET_EAFNOSUPPORT),
        (RET_K, 0, 0, RET_ALLOW),
    ]
    # Dispatch: after head instruction i (0-based), a jump of n lands on instruction i + 1 + n;
    # the blocks follow the head in the order mmap, mprotect, shmat, socket.
    head_len = 10
    mmap_at = head_len
    mprotect_at = mmap_at + len(mmap_block)
    shmat_at = mprotect_at + len(mprotect_block)
    socket_at = shmat_at + len(shmat_block)
    head = [
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ_K, 0, 7, AUDIT_ARCH_X86_64),  # other arch: allow (jump to the head's last instruction)
        (LD_W_ABS, 0, 0, OFF_NR),
        (JEQ_K, mmap_at - 4, 0, NR_MMAP),
        (JEQ_K, mprotect_at - 5, 0, NR_MPROTECT),
        (JEQ_K, mprotect_at - 6, 0, NR_PKEY_MPROTECT),
        (JEQ_K, shmat_at - 7, 0, NR_SHMAT),
        (JEQ_K, socket_at - 8, 0, NR_SOCKET),
        (JEQ_K, socket_at - 9, 0, NR_SOCKETPAIR),
        (RET_K, 0, 0, RET_ALLOW),
    ]
    assert len(head) == head_len
    return head + mmap_block + mprotect_block + shmat_block + socket_block


def install() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    instructions = _program()
    array = (SockFilter * len(instructions))(*[SockFilter(*i) for i in instructions])
    prog = SockFprog(len(instructions), array)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    if platform.machine() != "x86_64":
        sys.exit(f"systemd_seccomp: x86-64 only, this is {platform.machine()}")
    if len(sys.argv) < 2:
        sys.exit("usage: systemd_seccomp.py COMMAND [ARG...]")
    install()
    os.execv(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
