#!/usr/bin/env python3
"""Whether a change to bpf/tcpstates.c costs the daemon anything: compiles the daemon's
program (the flags `tcpwatch run` uses here) from a git revision's tcpstates.c and from the
working tree's, and compares each program's instructions.

    .venv/bin/python bench/daemon_program_bytes.py [REVISION]     # default HEAD~1

Identical instructions cost the same at every event, whatever a benchmark's noise says.
Needs root and bcc (the set-up of `make run`).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tcpwatch.sources import ebpf_load, ebpf_plan  # noqa: E402

FUNCTIONS = ("tp_btf_inet_sock_set_state", "tp_btf_tcp_retransmit_skb", "tp_btf_tcp_send_reset",
             "tp_btf_tcp_receive_reset", "tp_btf_timer_cancel", "tp_btf_timer_expire_entry", "socket_owners",
             "socket_diag")


def compiled(text: str, cflags: list) -> dict:
    from bcc import BPF

    module = BPF(text=text.encode(), cflags=cflags)
    try:
        found = {}
        for name in FUNCTIONS:
            try:
                found[name] = module.dump_func(name.encode())
            except Exception:   # not in that revision
                found[name] = None
        return found
    finally:
        module.cleanup()


def main():
    revision = sys.argv[1] if len(sys.argv) > 1 else "HEAD~1"
    old = subprocess.run(["git", "show", f"{revision}:tcpwatch/bpf/tcpstates.c"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    os.environ["BCC_KERNEL_SOURCE"] = ebpf_load.headers_dir()
    plan = ebpf_plan.make_plan(ebpf_plan.Request(owner_iterator=True, socket_iterator=True))
    cflags = list(plan.attempts[0].cflags)
    before, after = compiled(old, cflags), compiled(ebpf_load.program_text(), cflags)
    print(f"the daemon's programs ({plan.attempts[0].mode}), {revision} against the working tree:")
    for name in FUNCTIONS:
        a, b = before[name], after[name]
        sizes = f"{len(a) // 8 if a else '-'} -> {len(b) // 8 if b else '-'} instructions"
        print(f"  {name:28} {sizes:28} {'identical' if a == b else 'DIFFERENT'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
