#!/usr/bin/env python3
"""The cost floor for bench/churn_cost.py: the least a program on the same hook can do.

    .venv/bin/python bench/floor.py tp_btf|tracepoint

Bumps one per-CPU counter per (from, to) pair on inet_sock_set_state and nothing else,
attached the way tcpwatch attaches in that mode (tp_btf: compiled by bcc, loaded and attached
by tcpwatch.sources.bpf). Prints "attached", then holds until stdin closes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bcc import BPF  # noqa: E402

from tcpwatch.sources import bpf, btf  # noqa: E402

COUNT = r"""
BPF_PERCPU_ARRAY(pairs, u64, 256);
static __always_inline void count(u32 oldstate, u32 newstate)
{
    u32 pair = (oldstate & 15) * 16 + (newstate & 15);
    u64 *value = pairs.lookup(&pair);
    if (value)
        (*value)++;
}
"""
TP_BTF = COUNT + "int floor_tp_btf(u64 *ctx) { count(ctx[1], ctx[2]); return 0; }\n"
TRACEPOINT = COUNT + "TRACEPOINT_PROBE(sock, inet_sock_set_state) { count(args->oldstate, args->newstate); return 0; }\n"


def main():
    mode = sys.argv[1]
    if mode == "tp_btf":
        compiled = BPF(text=TP_BTF.encode())
        type_id = btf.Btf.load().type_id(btf.TYPEDEF, "btf_trace_inet_sock_set_state")
        _prog, link = bpf.attach_tp_btf(compiled, "floor_tp_btf", type_id)
        assert link is not None, "attach failed"
    else:
        compiled = BPF(text=TRACEPOINT.encode())
    print("attached", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
