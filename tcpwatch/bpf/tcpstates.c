/*
 * tcpwatch: TCP state transitions and time in state, aggregated in the kernel per network
 * namespace.
 *
 * Strategy
 *   sock:inet_sock_set_state (Linux 4.16+) fires on every state change of a full TCP socket.
 *   For each event this program bumps a per-CPU counter for the (from, to) pair. It also
 *   remembers, per socket, when the socket entered its state (tp_btf: in a table indexed by
 *   the socket cookie; tracepoint: in an LRU hash keyed by the socket's address). When the
 *   socket leaves that state, the program adds the time spent to a per-CPU log2 histogram of
 *   that state. User space reads the maps only when Prometheus scrapes.
 *   Nothing crosses to user space per event, unless EMIT_EVENTS is defined (the
 *   `tcpwatch trace` command).
 *
 * Two ways to attach (user space picks one and compiles with -DATTACH_TP_BTF or not)
 *   tp_btf:     BTF-typed raw tracepoints. The program gets the kernel's own arguments
 *               (const struct sock *sk, int oldstate, int newstate) with no record built for
 *               it, and reads socket fields directly; the verifier checks every such read
 *               against the kernel's BTF. bcc compiles these functions; user space loads them
 *               as BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP and attaches them (sources/bpf.py).
 *   tracepoint: the classic tracepoints, whose arguments come in a record laid out as
 *               tracefs describes. Socket fields beyond that record are read with
 *               bpf_probe_read_kernel. The fallback: kernels without BTF, or tp_btf refused.
 *
 *   No offset of a kernel struct comes from the headers bcc compiles against (they may be
 *   another kernel's). Every OFF_* below is passed as -D by user space, from the running
 *   kernel's BTF (sources/btf.py). Without BTF (tracepoint mode only) they are absent and the
 *   program records network namespace 0 ("unknown").
 *
 * Per network namespace
 *   Counters and histograms live in one per-CPU array element per namespace slot
 *   (struct netns_stats). netns_slots maps a namespace's cookie (net->net_cookie, which the
 *   kernel never hands out twice, unlike inode numbers) to its slot and its inode; free slots
 *   wait in the free_slots queue, which user space fills at load time and refills when it
 *   retires a namespace. Without net_cookie in the kernel's BTF the key is the inode. Slot 0 holds what has no slot: namespace unknown, or the table
 *   full (counted as netns_full). A socket's slot is looked up once, when the program first
 *   sees it, and kept in its per-socket entry.
 *
 *   CLOSE_WAIT: a leaked socket never leaves CLOSE_WAIT, so its histogram never sees it; user
 *   space reads its entry time instead. tp_btf: the socket's own row of socket_table, found
 *   by the socket cookie (bpf_get_socket_cookie), the number inet_diag reports as
 *   idiag_cookie: exact across namespaces and 4-tuple reuse. tracepoint mode cannot make a
 *   cookie, and keeps CLOSE_WAIT entry times in close_wait_entered, keyed by 4-tuple and
 *   namespace.
 *
 *   TIME_WAIT: timewait sockets are not full sockets. The state tracepoint shows FIN_WAIT2 ->
 *   CLOSE (or CLOSING/FIN_WAIT1 -> CLOSE) when tcp_time_wait() replaces the socket, and nothing
 *   when the timewait socket dies. With TRACK_TIME_WAIT defined, the timewait socket's own
 *   timer (tw_timer, callback tw_timer_handler) tells when it dies, and the timer itself says
 *   when it was born: tcp_time_wait() arms it to expire TCP_TIMEWAIT_LEN (TW_LEN_JIFFIES)
 *   after birth, so age = TW_LEN_JIFFIES - (expires - jiffies). No map, nothing stored at
 *   birth, and timewait sockets born before tcpwatch started are timed too.
 *     - timer_expire_entry: the normal death after 2MSL.
 *     - timer_cancel: an early death (reuse of its 4-tuple, or an RST), unless the timer is
 *       being restarted (mod_timer() cancels and starts it under the timer base's lock: the
 *       peer's FIN came again and 2MSL restarts; such a socket is timed from its last
 *       restart) or about to run (the kernel detaches an expiring timer, which fires
 *       timer_cancel, right before running it). A cancel is therefore settled at the next
 *       state change, cancel or expiry on its CPU (tw_settle): a death unless the timer's
 *       socket is still the same, its timer pending again or expiring. No hook on
 *       timer_start, the most frequent timer event of a busy TCP host.
 *   Ages have the precision of a jiffy (TICK_NS). A timewait socket standing in for an
 *   orphaned FIN_WAIT2 socket (substate FIN_WAIT2) is not timed. The timer hooks run for
 *   every kernel timer; for all but timewait timers they compare one pointer and return.
 */

#include <uapi/linux/in.h>

#ifndef ATTACH_TP_BTF
/* tcp:tcp_send_reset has a field of type enum sk_rst_reason (Linux 6.10+), which older headers
 * lack. bcc writes the tracepoint's argument struct from tracefs, so name a 4-byte enum of
 * our own for it: the field is never read. */
#define sk_rst_reason tcpwatch_sk_rst_reason
enum tcpwatch_sk_rst_reason { TCPWATCH_SK_RST_REASON_UNREAD = 0 };
#endif

#ifndef MAX_SOCKETS
#define MAX_SOCKETS 65536   /* entries, per LRU map; 1 .. 16M */
#endif
#ifndef MAX_NETNS
#define MAX_NETNS 128       /* namespace slots, slot 0 included */
#endif

#define NSTATES 16          /* kernel TCP states fit in 4 bits (TCP_MAX_STATES = 14) */
/* Histogram slots: slot 0 holds stays under 2^HIST_FIRST ns, slot j stays in
 * [2^(HIST_FIRST+j-1), 2^(HIST_FIRST+j)) ns, the last slot stays of 2^HIST_LAST ns or more. Only these
 * bounds are exported (tcpwatch/histograms.py passes them), so no memory goes to the rest. */
#ifndef HIST_FIRST
#define HIST_FIRST 10
#endif
#ifndef HIST_LAST
#define HIST_LAST 45
#endif
#define HIST_SLOTS (HIST_LAST - HIST_FIRST + 2)

#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

/* Indexes of the global counters; mirrored in tcpwatch/sources/bpf.py. */
#define C_UNKNOWN_SOCKET 0    /* left a state we never saw it enter (before attach, or evicted) */
#define C_NETNS_FULL 1        /* an event counted in slot 0 because every namespace slot was taken */
#define C_SLOT_TAKEN 2        /* tp_btf: a new socket's row in socket_table held by a live socket */
#define C_MAX 3

/* Indexes of the per-namespace counters; mirrored in tcpwatch/sources/bpf.py. */
#define N_RETRANSMITS 0
#define N_RESETS_SENT 1
#define N_RESETS_RECEIVED 2
#define N_MAX 3

#ifdef ATTACH_TP_BTF
/* One row of socket_table; user space reads this layout (sources/bpf.py). The writer stores
 * ns before state, and cookie last when it claims a row, so that a reader who sees a state
 * sees its time. */
struct entered {
    u64 cookie;               /* the socket that owns the row; 0: free */
    u32 state;
    u32 slot;                 /* its namespace's slot in netns_stats */
    u64 ns;                   /* bpf_ktime_get_ns() when the socket entered `state` */
};
#else
struct entered {
    u64 ns;                   /* bpf_ktime_get_ns() when the socket entered `state` */
    u32 state;
    u32 slot;                 /* its namespace's slot in netns_stats */
};
#endif

/* A connection as user space sees it in inet_diag: local first; IPv4 uses 4 bytes. */
struct tuple {
    u16 family;
    u16 sport;                /* host byte order */
    u16 dport;
    u16 pad;
    u32 netns;                /* inode of the socket's network namespace; 0: unknown */
    u32 pad2;
    u8 saddr[16];
    u8 daddr[16];
};

/* Who a namespace is: the key of its slot (its cookie; its inode where the kernel has no
 * net_cookie) and its inode, as /proc/PID/ns/net shows it. 0: unknown. */
struct netns_id {
    u64 cookie;
    u32 inum;
    u32 pad;
};

/* A namespace's slot in netns_stats, and its inode for user space. */
struct netns_slot_value {
    u32 slot;
    u32 inum;
};

struct netns_stats {
    u64 transitions[NSTATES * NSTATES];       /* index from * NSTATES + to */
    u64 duration_slots[NSTATES * HIST_SLOTS]; /* index state * HIST_SLOTS + slot */
    u64 duration_sum_ns[NSTATES];
    u64 counters[N_MAX];
};

#ifdef ATTACH_TP_BTF
/* Per-socket entries, direct-mapped by socket cookie: row cookie % SOCKET_SLOTS (a power of
 * two). Cookies are handed out in sequence, so live sockets spread over the rows; a row held
 * by another live socket is not taken over (counted as slot_taken). No hash, no lock, no
 * allocation: a lookup is an array index. User space maps the table (BPF_F_MMAPABLE) and finds
 * the CLOSE_WAIT entry time of an inet_diag socket by its cookie, so CLOSE_WAIT needs no map
 * of its own. */
BPF_F_TABLE("array", u32, struct entered, socket_table, SOCKET_SLOTS, 1024 /* BPF_F_MMAPABLE */);
#else
/* Per-socket entries keyed by the socket's address, and CLOSE_WAIT entry times keyed by
 * 4-tuple and namespace: the classic tracepoints cannot make a cookie. */
struct close_wait_value {
    u64 ns;                   /* when the socket entered CLOSE_WAIT */
    u32 netns;
    u32 pad;
};
BPF_TABLE("lru_hash", u64, struct entered, socket_states, MAX_SOCKETS);
BPF_TABLE("lru_hash", struct tuple, struct close_wait_value, close_wait_entered, MAX_SOCKETS);
#endif
BPF_PERCPU_ARRAY(netns_stats, struct netns_stats, MAX_NETNS);
BPF_HASH(netns_slots, u64, struct netns_slot_value, MAX_NETNS);
BPF_QUEUE(free_slots, u32, MAX_NETNS);
BPF_PERCPU_ARRAY(counters, u64, C_MAX);

#ifdef EMIT_EVENTS
struct event {
    u64 ts_ns;
    u64 dwell_ns;             /* time in oldstate, 0 when unknown */
    u64 cookie;               /* 0 in tracepoint mode, unless a timewait socket's death */
    struct tuple tuple;
    u32 oldstate;
    u32 newstate;
    u32 pid;                  /* the current task: the owner only for changes a syscall on */
    u32 pad;                  /* this socket makes (connect, close); user space decides */
    char comm[16];
    u32 snd_una;              /* struct tcp_sock at the change (SEQ_NUMBERS): the oldest byte */
    u32 snd_nxt;              /* not acknowledged, the next to send, the next the application */
    u32 write_seq;            /* writes (a FIN queued now takes this number), the next expected */
    u32 rcv_nxt;              /* from the peer; user space knows at which changes they mean */
};                            /* something (ladder_numbers.py) */
BPF_PERF_OUTPUT(events);
#endif

/* A field of a kernel struct at an offset the kernel's BTF gave. tp_btf: a plain load, which
 * the verifier checks against BTF and which reads 0 through a NULL pointer. tracepoint: the
 * pointers are untyped, so copy with bpf_probe_read_kernel (0 on a fault). */
#ifdef ATTACH_TP_BTF
#define KREAD(type, base, off) (*(type *)((void *)(base) + (off)))
#else
#define KREAD(type, base, off) ({ type _v = 0; bpf_probe_read_kernel(&_v, sizeof(_v), (void *)(base) + (off)); _v; })
#endif

/* Makes the compiler forget what it knows of x, so that a bounds check that follows is kept
 * where the verifier needs it (on the register used to index), not dropped as redundant. */
#define forget_bounds(x) asm volatile("" : "+r"(x))

static __always_inline void bump(u32 index)
{
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

/* Who a struct net is (typed reads in tp_btf, copies in tracepoint mode). */
static __always_inline struct netns_id net_id(const void *net)
{
    struct netns_id id = {};
#ifdef OFF_NS_INUM
    if (!net)
        return id;
    id.inum = KREAD(u32, net, OFF_NS_INUM);
#ifdef OFF_NET_COOKIE
    id.cookie = KREAD(u64, net, OFF_NET_COOKIE);
#else
    id.cookie = id.inum;
#endif
#endif
    return id;
}

/* The network namespace of a socket (or of a timewait or request socket: all start with
 * struct sock_common). Zeros when unknown. */
static __always_inline struct netns_id sock_netns(const void *sk)
{
#ifdef OFF_SKC_NET
    if (sk)
        return net_id(KREAD(const void *, sk, OFF_SKC_NET));
#endif
    struct netns_id none = {};
    return none;
}

/* The namespace slot this CPU resolved last: connections come in runs within one namespace,
 * so this saves most netns_slots lookups. User space clears it on every CPU when it gives a
 * slot back (sources/ebpf_maps.py: release_stale_netns), after removing the key from netns_slots. */
struct netns_cached {
    u64 cookie;
    u32 slot;
    u32 pad;
};
BPF_PERCPU_ARRAY(netns_last, struct netns_cached, 1);

/* The slot of a namespace in netns_stats, taking a free one the first time it is seen. */
static __always_inline u32 netns_slot(struct netns_id id)
{
    if (!id.cookie)
        return 0;
    u32 zero = 0;
    struct netns_cached *last = netns_last.lookup(&zero);
    if (last && last->cookie == id.cookie)
        return last->slot;
    struct netns_slot_value fresh = {.inum = id.inum};
    struct netns_slot_value *found = netns_slots.lookup(&id.cookie);
    if (found) {
        fresh.slot = found->slot;
    } else if (free_slots.pop(&fresh.slot) != 0) {
        bump(C_NETNS_FULL);
        return 0;
    } else if (netns_slots.insert(&id.cookie, &fresh) != 0) {   /* another CPU inserted it first */
        free_slots.push(&fresh.slot, 0);
        found = netns_slots.lookup(&id.cookie);
        return found ? found->slot : 0;
    }
    if (last) {
        last->cookie = id.cookie;
        last->slot = fresh.slot;
    }
    return fresh.slot;
}

static __always_inline struct netns_stats *stats_of(u32 slot)
{
    return netns_stats.lookup(&slot);
}

static __always_inline void count_in(u32 slot, u32 counter)
{
    struct netns_stats *stats = stats_of(slot);
    if (stats && counter < N_MAX)
        stats->counters[counter]++;
}

static __always_inline u32 hist_slot(u64 ns)
{
    u32 k = bpf_log2l(ns);    /* ns in [2^(k-1), 2^k) */
    if (k <= HIST_FIRST)
        return 0;
    if (k > HIST_LAST)
        return HIST_SLOTS - 1;
    return k - HIST_FIRST;
}

static __always_inline void observe(struct netns_stats *stats, u32 state, u64 dwell_ns)
{
    if (!stats)
        return;
    /* u64 indexes: a u32 is zero-extended in a copy, and the check would not cover the use. */
    u64 index = state * HIST_SLOTS + hist_slot(dwell_ns);
    u64 row = state;
    forget_bounds(index);
    forget_bounds(row);
    if (index < NSTATES * HIST_SLOTS && row < NSTATES) {
        stats->duration_slots[index]++;
        stats->duration_sum_ns[row] += dwell_ns;
    }
}

static __always_inline int port_tracked(u16 sport, u16 dport)
{
#ifdef PORT_MIN
    return (sport >= PORT_MIN && sport <= PORT_MAX) || (dport >= PORT_MIN && dport <= PORT_MAX);
#else
    return 1;
#endif
}

#ifdef TRACK_TIME_WAIT
#define TCP_TIME_WAIT_SUBSTATE 6

struct tw_cancel {
    u64 timer;                /* a timewait timer cancelled just now on this CPU; 0: none */
    u64 age_ns;
    u64 cookie;               /* the timewait socket's cookie and ports when cancelled: the */
    u32 ports;                /* same socket at the settling if they are unchanged */
    u32 pad;
    struct netns_id netns;
#ifdef EMIT_EVENTS
    struct tuple tuple;       /* who died, read while the socket was alive: for the trace */
#endif
};
BPF_PERCPU_ARRAY(tw_cancelled, struct tw_cancel, 1);

/* Fields of the timewait socket that holds a tw_timer. The timer pointer is typed in tp_btf,
 * but the socket lies before it, where typed reads cannot go: copy. */
#define TW_FIELD(timer, off) ((const void *)((timer) - OFF_TW_TIMER + (off)))

/* The socket's age in ns if this timer is a TIME_WAIT socket's that tcpwatch watches, else 0. */
static __always_inline u64 tw_age(u64 timer, u64 function, u64 expires)
{
    if (function != TW_TIMER_HANDLER)
        return 0;
    u8 substate = 0;
    bpf_probe_read_kernel(&substate, 1, TW_FIELD(timer, OFF_TW_SUBSTATE));
    if (substate != TCP_TIME_WAIT_SUBSTATE)
        return 0;
#ifdef PORT_MIN   /* --collector.bpf.ports applies to timewait sockets too */
    u16 sport = 0, dport = 0;
    bpf_probe_read_kernel(&sport, sizeof(sport), TW_FIELD(timer, OFF_SKC_NUM));
    bpf_probe_read_kernel(&dport, sizeof(dport), TW_FIELD(timer, OFF_SKC_DPORT));
    if (!port_tracked(sport, ntohs(dport)))
        return 0;
#endif
    s64 age = TW_LEN_JIFFIES - (s64)(expires - bpf_jiffies64());
    return age > 0 ? (u64)age * TICK_NS : 1;
}

static __always_inline struct netns_id tw_netns(u64 timer)
{
    const void *net = 0;
    struct netns_id id = {};
    bpf_probe_read_kernel(&net, sizeof(net), TW_FIELD(timer, OFF_SKC_NET));
    if (!net)
        return id;
    bpf_probe_read_kernel(&id.inum, sizeof(id.inum), net + OFF_NS_INUM);
#ifdef OFF_NET_COOKIE
    bpf_probe_read_kernel(&id.cookie, sizeof(id.cookie), net + OFF_NET_COOKIE);
#else
    id.cookie = id.inum;
#endif
    return id;
}

#ifdef EMIT_EVENTS
/* The timewait socket's cookie (copied from the full socket it replaced, so the trace can
 * join the two) and 4-tuple. */
static __always_inline void tw_identity(u64 timer, u64 *cookie, struct tuple *t)
{
    bpf_probe_read_kernel(cookie, sizeof(*cookie), TW_FIELD(timer, OFF_SKC_COOKIE));
    bpf_probe_read_kernel(&t->family, sizeof(t->family), TW_FIELD(timer, OFF_SKC_FAMILY));
    bpf_probe_read_kernel(&t->sport, sizeof(t->sport), TW_FIELD(timer, OFF_SKC_NUM));
    u16 dport = 0;
    bpf_probe_read_kernel(&dport, sizeof(dport), TW_FIELD(timer, OFF_SKC_DPORT));
    t->dport = ntohs(dport);
    if (t->family == AF_INET) {
        bpf_probe_read_kernel(t->saddr, 4, TW_FIELD(timer, OFF_SKC_RCV_SADDR));
        bpf_probe_read_kernel(t->daddr, 4, TW_FIELD(timer, OFF_SKC_DADDR));
    } else {
        bpf_probe_read_kernel(t->saddr, 16, TW_FIELD(timer, OFF_SKC_V6_RCV_SADDR));
        bpf_probe_read_kernel(t->daddr, 16, TW_FIELD(timer, OFF_SKC_V6_DADDR));
    }
}

/* A timewait socket died: one time_wait -> close event for the trace. */
static __always_inline void tw_emit(void *ctx, u64 age, u64 cookie, const struct tuple *t)
{
    struct event ev = {.ts_ns = bpf_ktime_get_ns(), .dwell_ns = age, .cookie = cookie, .tuple = *t,
                       .oldstate = TCP_TIME_WAIT, .newstate = TCP_CLOSE};
    events.perf_submit(ctx, &ev, sizeof(ev));
}
#endif

/* The timewait socket's cookie, and its ports as one word: what tells it from another
 * timewait socket that took its memory (timewait sockets come from a SLAB_TYPESAFE_BY_RCU
 * cache, whose freed objects are handed out again at once). */
static __always_inline u64 tw_cookie(u64 timer, u32 *ports)
{
    u64 cookie = 0;
    u16 sport = 0, dport = 0;
    bpf_probe_read_kernel(&cookie, sizeof(cookie), TW_FIELD(timer, OFF_SKC_COOKIE));
    bpf_probe_read_kernel(&sport, sizeof(sport), TW_FIELD(timer, OFF_SKC_NUM));
    bpf_probe_read_kernel(&dport, sizeof(dport), TW_FIELD(timer, OFF_SKC_DPORT));
    *ports = (u32)sport << 16 | dport;
    return cookie;
}

/* Whether the cancelled timer still belongs to a live timewait socket: the same socket, its
 * timer still the timewait handler, and either armed again (a 2MSL restart: mod_timer()
 * cancels and starts it under its base's lock, so it is pending by any later event) or about
 * to run (`expiring`: the kernel detaches a timer, with a timer_cancel event, just before
 * running it). A socket that died has its timer deleted (not pending) or shut down (no
 * handler). */
static __always_inline int tw_alive(const struct tw_cancel *cancelled, u64 timer, int expiring)
{
    u64 function = 0, pprev = 0;
    u32 ports = 0;
    bpf_probe_read_kernel(&function, sizeof(function), (const void *)(timer + OFF_TIMER_FUNCTION));
    if (function != TW_TIMER_HANDLER || tw_cookie(timer, &ports) != cancelled->cookie || ports != cancelled->ports)
        return 0;
    if (expiring)
        return 1;
    bpf_probe_read_kernel(&pprev, sizeof(pprev), (const void *)(timer + OFF_TIMER_PPREV));
    return pprev != 0;        /* timer_pending() */
}

/* Settles a cancel left on this CPU, at the next state change, cancel or expiry there: a
 * death, unless the timer's socket is alive (tw_alive). `next`: the timer of this event. */
static __always_inline void tw_settle(void *ctx, u64 next)
{
    u32 zero = 0;
    struct tw_cancel *cancelled = tw_cancelled.lookup(&zero);
    if (!cancelled || !cancelled->timer)
        return;
    u64 timer = cancelled->timer;
    cancelled->timer = 0;
    if (tw_alive(cancelled, timer, timer == next))
        return;
    observe(stats_of(netns_slot(cancelled->netns)), TCP_TIME_WAIT, cancelled->age_ns);
#ifdef EMIT_EVENTS
    tw_emit(ctx, cancelled->age_ns, cancelled->cookie, &cancelled->tuple);
#endif
}

static __always_inline void tw_timer_cancelled(void *ctx, u64 timer, u64 function, u64 expires)
{
    tw_settle(ctx, timer);    /* a second cancel of the same timer: it had been restarted */
    u64 age = tw_age(timer, function, expires);
    u32 zero = 0;
    struct tw_cancel *cancelled = tw_cancelled.lookup(&zero);
    if (!age || !cancelled)
        return;
    cancelled->timer = timer;
    cancelled->age_ns = age;
    cancelled->cookie = tw_cookie(timer, &cancelled->ports);
    cancelled->netns = tw_netns(timer);
#ifdef EMIT_EVENTS
    u64 unused = 0;
    tw_identity(timer, &unused, &cancelled->tuple);
    cancelled->tuple.netns = cancelled->netns.inum;
#endif
}

static __always_inline void tw_timer_expired(void *ctx, u64 timer, u64 function, u64 expires)
{
    tw_settle(ctx, timer);   /* an expiring timer is detached first, which fires timer_cancel */
    u64 age = tw_age(timer, function, expires);
    if (!age)
        return;
    struct netns_id netns = tw_netns(timer);
    observe(stats_of(netns_slot(netns)), TCP_TIME_WAIT, age);
#ifdef EMIT_EVENTS
    u64 cookie = 0;
    struct tuple t = {.netns = netns.inum};
    tw_identity(timer, &cookie, &t);
    tw_emit(ctx, age, cookie, &t);
#endif
}
#define SETTLE_TIME_WAIT(ctx) tw_settle(ctx, 0)
#else
#define SETTLE_TIME_WAIT(ctx)
#endif /* TRACK_TIME_WAIT */


/* One state change of one socket, as both attach modes see it. */
struct change {
    const void *sk;
    u32 oldstate;
    u32 newstate;
    u64 now;
    u64 dwell_ns;             /* time in oldstate, 0 when unknown */
    u64 cookie;               /* tp_btf only */
    u32 slot;
    u8 close_wait_edge;       /* enters or leaves CLOSE_WAIT */
};

/* The socket's entry: find it, claim one for a new socket, update it, release it. */
#ifdef ATTACH_TP_BTF
/* bcc's helpers.h declares this helper with an int result, which truncates the cookie. */
static u64 (*socket_cookie)(const void *sk) = (void *)BPF_FUNC_get_socket_cookie;
#define ordered() asm volatile("" ::: "memory")

static __always_inline struct entered *entry_row(struct change *c)
{
    u32 row = c->cookie & (SOCKET_SLOTS - 1);
    return socket_table.lookup(&row);
}

static __always_inline struct entered *entry_find(struct change *c)
{
    c->cookie = socket_cookie(c->sk);
    struct entered *row = entry_row(c);
    return row && row->cookie == c->cookie ? row : 0;
}

static __always_inline void entry_claim(struct change *c)
{
    struct entered *row = entry_row(c);
    if (!row)
        return;
    if (row->cookie) {
        bump(C_SLOT_TAKEN);
        return;
    }
    row->ns = c->now;
    row->slot = c->slot;
    ordered();
    row->state = c->newstate;
    ordered();
    row->cookie = c->cookie;
}

static __always_inline void entry_update(struct entered *entry, struct change *c)
{
    entry->ns = c->now;
    ordered();
    entry->state = c->newstate;
}

static __always_inline void entry_release(struct entered *entry, struct change *c)
{
    entry->cookie = 0;
}
#else
static __always_inline struct entered *entry_find(struct change *c)
{
    u64 key = (u64)c->sk;
    return socket_states.lookup(&key);
}

static __always_inline void entry_claim(struct change *c)
{
    u64 key = (u64)c->sk;
    struct entered fresh = {.ns = c->now, .state = c->newstate, .slot = c->slot};
    socket_states.update(&key, &fresh);
}

static __always_inline void entry_update(struct entered *entry, struct change *c)
{
    entry->ns = c->now;            /* in place: cheaper than replacing the element */
    entry->state = c->newstate;
}

static __always_inline void entry_release(struct entered *entry, struct change *c)
{
    u64 key = (u64)c->sk;
    socket_states.delete(&key);
}
#endif

/* Counts and times the change. Returns 1 when the change also needs the socket's identity
 * (its 4-tuple, cookie, namespace): entering or leaving CLOSE_WAIT, or any change when
 * tracing. The caller then fills the tuple and calls on_identity. */
static __always_inline int on_state(struct change *c, u16 sport, u16 dport)
{
    u32 oldstate = c->oldstate, newstate = c->newstate;
    if (oldstate >= NSTATES || newstate >= NSTATES || !port_tracked(sport, dport))
        return 0;
    u64 now = bpf_ktime_get_ns();
    c->now = now;

    struct entered *entry = entry_find(c);
    u32 slot = entry ? entry->slot : netns_slot(sock_netns(c->sk));
    c->slot = slot;
    struct netns_stats *stats = stats_of(slot);
    u64 pair = oldstate * NSTATES + newstate;
    forget_bounds(pair);
    if (stats && pair < NSTATES * NSTATES)
        stats->transitions[pair]++;

    if (oldstate != newstate) {   /* a self-transition keeps the clock running */
        if (entry && entry->state == oldstate) {
            c->dwell_ns = now - entry->ns;
            observe(stats, oldstate, c->dwell_ns);
        } else if (oldstate != TCP_CLOSE && oldstate != TCP_LISTEN) {
            bump(C_UNKNOWN_SOCKET);   /* a new child's first event is LISTEN -> SYN_RECV */
        }
        if (newstate == TCP_CLOSE) {
            if (entry)
                entry_release(entry, c);
        } else if (entry) {
            entry_update(entry, c);
        } else {
            entry_claim(c);
        }
    }

#ifdef EMIT_EVENTS
    return 1;
#elif defined(ATTACH_TP_BTF)
    return 0;   /* CLOSE_WAIT entry times are the socket's own entry, found by cookie */
#else
    c->close_wait_edge = (newstate == TCP_CLOSE_WAIT) != (oldstate == TCP_CLOSE_WAIT);
    return c->close_wait_edge;
#endif
}

/* Whether on_identity needs the 4-tuple: tp_btf keys CLOSE_WAIT by cookie instead. */
static __always_inline int needs_tuple(void)
{
#if defined(ATTACH_TP_BTF) && !defined(EMIT_EVENTS)
    return 0;
#else
    return 1;
#endif
}

/* The rare part of a change: CLOSE_WAIT entry times (classic tracepoints), trace events. */
static __always_inline void on_identity(void *ctx, const struct change *c, struct tuple *t)
{
    u32 oldstate = c->oldstate, newstate = c->newstate;
    t->netns = sock_netns(c->sk).inum;
#ifndef ATTACH_TP_BTF
    if (c->close_wait_edge) {
        if (newstate == TCP_CLOSE_WAIT) {
            struct close_wait_value value = {.ns = c->now, .netns = t->netns};
            close_wait_entered.update(t, &value);
        } else {
            close_wait_entered.delete(t);
        }
    }
#endif
#ifdef EMIT_EVENTS
    struct event ev = {.ts_ns = c->now, .dwell_ns = c->dwell_ns, .cookie = c->cookie, .tuple = *t,
                       .oldstate = oldstate, .newstate = newstate,
                       .pid = bpf_get_current_pid_tgid() >> 32};
    bpf_get_current_comm(ev.comm, sizeof(ev.comm));
#ifdef SEQ_NUMBERS
    /* tcp_sock lies beyond struct sock, where the tp_btf argument's type ends: copy. */
    bpf_probe_read_kernel(&ev.snd_una, 4, (const void *)c->sk + OFF_TP_SND_UNA);
    bpf_probe_read_kernel(&ev.snd_nxt, 4, (const void *)c->sk + OFF_TP_SND_NXT);
    bpf_probe_read_kernel(&ev.write_seq, 4, (const void *)c->sk + OFF_TP_WRITE_SEQ);
    bpf_probe_read_kernel(&ev.rcv_nxt, 4, (const void *)c->sk + OFF_TP_RCV_NXT);
#endif
    events.perf_submit(ctx, &ev, sizeof(ev));
#endif
}

#ifdef ATTACH_TP_BTF
/*
 * tp_btf entry points. ctx holds the tracepoint's arguments as u64s, after the hidden
 * first one: see the btf_trace_<name> typedefs. Names have no bcc auto-attach prefix: user
 * space loads and attaches them itself.
 */
/* The local port as the classic tracepoint reports it: inet_sport, because a closing socket's
 * skc_num is already 0 (inet_put_port). inet_sport lies in struct inet_sock, past the struct
 * sock the verifier types sk as, so it is copied with bpf_probe_read_kernel. */
static __always_inline u16 sk_local_port(const void *sk)
{
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), (const void *)sk + OFF_INET_SPORT);
    return ntohs(port);
}

int tp_btf_inet_sock_set_state(u64 *ctx)
{
    SETTLE_TIME_WAIT(ctx);
    const void *sk = (const void *)ctx[0];
    if (KREAD(u16, sk, OFF_SK_PROTOCOL) != IPPROTO_TCP)
        return 0;
    struct change c = {.sk = sk, .oldstate = (u32)ctx[1], .newstate = (u32)ctx[2]};
#ifdef PORT_MIN   /* read the ports up front only when they filter */
    u16 sport = sk_local_port(sk), dport = ntohs(KREAD(u16, sk, OFF_SKC_DPORT));
#else
    u16 sport = 0, dport = 0;
#endif
    if (!on_state(&c, sport, dport))
        return 0;
    struct tuple t = {};
    if (needs_tuple()) {
        t.family = KREAD(u16, sk, OFF_SKC_FAMILY);
        t.sport = sk_local_port(sk);
        t.dport = ntohs(KREAD(u16, sk, OFF_SKC_DPORT));
        if (t.family == AF_INET) {
            *(u32 *)t.saddr = KREAD(u32, sk, OFF_SKC_RCV_SADDR);
            *(u32 *)t.daddr = KREAD(u32, sk, OFF_SKC_DADDR);
        } else {
            ((u64 *)t.saddr)[0] = KREAD(u64, sk, OFF_SKC_V6_RCV_SADDR);
            ((u64 *)t.saddr)[1] = KREAD(u64, sk, OFF_SKC_V6_RCV_SADDR + 8);
            ((u64 *)t.daddr)[0] = KREAD(u64, sk, OFF_SKC_V6_DADDR);
            ((u64 *)t.daddr)[1] = KREAD(u64, sk, OFF_SKC_V6_DADDR + 8);
        }
    }
    on_identity(ctx, &c, &t);
    return 0;
}

int tp_btf_tcp_retransmit_skb(u64 *ctx)
{
    count_in(netns_slot(sock_netns((const void *)ctx[0])), N_RETRANSMITS);
    return 0;
}

/* A reset for a packet no socket wanted has no sk: its namespace is the receiving device's. */
int tp_btf_tcp_send_reset(u64 *ctx)
{
    struct netns_id netns = sock_netns((const void *)ctx[0]);
    const void *skb = (const void *)ctx[1];
    if (!netns.cookie && skb) {
        const void *dev = KREAD(const void *, skb, OFF_SKB_DEV);
        netns = net_id(dev ? KREAD(const void *, dev, OFF_DEV_ND_NET) : 0);
    }
    count_in(netns_slot(netns), N_RESETS_SENT);
    return 0;
}

int tp_btf_tcp_receive_reset(u64 *ctx)
{
    count_in(netns_slot(sock_netns((const void *)ctx[0])), N_RESETS_RECEIVED);
    return 0;
}

#ifdef TRACK_TIME_WAIT
int tp_btf_timer_expire_entry(u64 *ctx)
{
    const void *timer = (const void *)ctx[0];
    tw_timer_expired(ctx, (u64)timer, KREAD(u64, timer, OFF_TIMER_FUNCTION), KREAD(u64, timer, OFF_TIMER_EXPIRES));
    return 0;
}

int tp_btf_timer_cancel(u64 *ctx)
{
    const void *timer = (const void *)ctx[0];
    tw_timer_cancelled(ctx, (u64)timer, KREAD(u64, timer, OFF_TIMER_FUNCTION), KREAD(u64, timer, OFF_TIMER_EXPIRES));
    return 0;
}
#endif

#else /* classic tracepoints: bcc attaches TRACEPOINT_PROBE functions itself */

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    SETTLE_TIME_WAIT(args);
    if (args->protocol != IPPROTO_TCP)
        return 0;
    struct change c = {.sk = args->skaddr, .oldstate = args->oldstate, .newstate = args->newstate};
    if (!on_state(&c, args->sport, args->dport))
        return 0;
    struct tuple t = {.family = args->family, .sport = args->sport, .dport = args->dport};
    if (args->family == AF_INET) {
        __builtin_memcpy(t.saddr, args->saddr, 4);
        __builtin_memcpy(t.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(t.saddr, args->saddr_v6, 16);
        __builtin_memcpy(t.daddr, args->daddr_v6, 16);
    }
    on_identity(args, &c, &t);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    count_in(netns_slot(sock_netns(args->skaddr)), N_RETRANSMITS);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
    struct netns_id netns = sock_netns(args->skaddr);
#ifdef OFF_SKB_DEV
    if (!netns.cookie && args->skbaddr) {
        const void *dev = KREAD(const void *, args->skbaddr, OFF_SKB_DEV);
        netns = net_id(dev ? KREAD(const void *, dev, OFF_DEV_ND_NET) : 0);
    }
#endif
    count_in(netns_slot(netns), N_RESETS_SENT);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    count_in(netns_slot(sock_netns(args->skaddr)), N_RESETS_RECEIVED);
    return 0;
}

#ifdef TRACK_TIME_WAIT
TRACEPOINT_PROBE(timer, timer_expire_entry)
{
    tw_timer_expired(args, (u64)args->timer, (u64)args->function, KREAD(u64, args->timer, OFF_TIMER_EXPIRES));
    return 0;
}

TRACEPOINT_PROBE(timer, timer_cancel)   /* its record has only the timer: read the rest from it */
{
    tw_timer_cancelled(args, (u64)args->timer, KREAD(u64, args->timer, OFF_TIMER_FUNCTION),
                       KREAD(u64, args->timer, OFF_TIMER_EXPIRES));
    return 0;
}
#endif
#endif /* ATTACH_TP_BTF */

#ifdef OWNER_ITER
/*
 * Who holds each socket, for the process collector: a BPF iterator over every task's open
 * files (the kernel's iter/task_file), read once per scrape instead of one readlink of
 * /proc/PID/fd/N per fd. For each socket fd it writes (tgid, socket inode, comm); the kernel
 * visits tasks in ascending pid order and a thread sharing its leader's files only once.
 * User space loads it as BPF_TRACE_ITER on bpf_iter_task_file and attaches it with a link;
 * fields are read at offsets from the kernel's BTF, as direct loads the verifier checks.
 */
struct task_file_ctx {        /* struct bpf_iter__task_file */
    void *meta;               /* struct bpf_iter_meta *: its first member is the seq_file */
    void *task;               /* struct task_struct *, NULL at the end */
    u32 fd;
    u32 pad;
    void *file;               /* struct file *, NULL at the end */
};

struct socket_owner {
    u32 tgid;
    u32 pad;
    u64 inode;
    u64 comm[2];              /* task->comm, 16 bytes */
};

static long (*owner_seq_write)(void *seq, const void *data, u32 len) = (void *)BPF_FUNC_seq_write;
#define TYPED(type, base, off) (*(type *)((void *)(base) + (off)))
#define MODE_TYPE 0170000     /* S_IFMT */
#define MODE_SOCKET 0140000   /* S_IFSOCK */

int socket_owners(struct task_file_ctx *ctx)
{
    void *task = ctx->task;
    void *file = ctx->file;
    if (!task || !file)
        return 0;
    void *inode = TYPED(void *, file, OFF_FILE_INODE);
    if (!inode || (TYPED(u16, inode, OFF_INODE_MODE) & MODE_TYPE) != MODE_SOCKET)
        return 0;
    struct socket_owner owner = {
        .tgid = TYPED(u32, task, OFF_TASK_TGID),
        .inode = TYPED(u64, inode, OFF_INODE_INO),
        .comm = {TYPED(u64, task, OFF_TASK_COMM), TYPED(u64, task, OFF_TASK_COMM + 8)},
    };
    owner_seq_write(TYPED(void *, ctx->meta, 0), &owner, sizeof(owner));
    return 0;
}
#endif /* OWNER_ITER */

#ifdef SOCKET_ITER
/*
 * Every TCP socket of one network namespace, for the socket-counting collectors: a BPF
 * iterator over the kernel's TCP hash tables (iter/tcp: listening sockets first, then the
 * established table, which holds timewait and request sockets too), read once per scrape
 * and per namespace instead of an inet_diag dump.
 *
 * For each socket it writes the record inet_diag would send: a netlink header and a struct
 * inet_diag_msg, with the same values, so that one decoder (sources/inet_diag_decoder.py)
 * reads both and the two sources cannot disagree. Every record has the same 88 bytes (no
 * attributes), which the decoder reads column by column. What inet_diag does, done here:
 *   - a request socket (TCP_NEW_SYN_RECV) is reported as SYN_RECV;
 *   - a timewait socket is reported in its substate (TIME_WAIT, or FIN_WAIT2 when it stands
 *     in for an orphaned FIN_WAIT2 socket), with the milliseconds left on its timer;
 *   - a listener's rqueue and wqueue are its accept queue's length and limit;
 *   - the inode is that of the socket's VFS inode (sock_i_ino), 0 when no file holds it;
 *   - the cookie is made only for CLOSE_WAIT sockets (the only ones the decoder reads it of).
 * The iterator walks the namespace of the thread that created its fd (BPF_ITER_CREATE).
 * sock_common fields are direct loads the verifier checks against BTF; the rest are copied
 * with bpf_probe_read_kernel (the context types only the common part).
 */
struct tcp_iter_ctx {         /* struct bpf_iter__tcp */
    void *meta;               /* struct bpf_iter_meta *: its first member is the seq_file */
    void *sk_common;          /* struct sock_common *, NULL at the end */
    u32 uid;
};

struct diag_record {          /* struct nlmsghdr, then struct inet_diag_msg */
    u32 nlmsg_len;
    u16 nlmsg_type;
    u16 nlmsg_flags;
    u32 nlmsg_seq;
    u32 nlmsg_pid;
    u8 family;
    u8 state;
    u8 timer;
    u8 retrans;
    u16 sport;                /* big-endian, as inet_diag sends them */
    u16 dport;
    u32 src[4];
    u32 dst[4];
    u32 ifindex;
    u32 cookie[2];
    u32 expires;              /* ms left on a timewait socket's timer */
    u32 rqueue;
    u32 wqueue;
    u32 uid;
    u32 inode;
};

#define TCPDIAG_GETSOCK 18
#define NLM_F_MULTI 2
#define TCP_SYN_RECV 3
#define TCP_NEW_SYN_RECV 12
#define AF_INET6_FAMILY 10

static long (*diag_seq_write)(void *seq, const void *data, u32 len) = (void *)BPF_FUNC_seq_write;
static u64 (*diag_socket_cookie)(const void *sk) = (void *)BPF_FUNC_get_socket_cookie;
#define COMMON(type, base, off) (*(type *)((void *)(base) + (off)))
#define COPY(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BIG_ENDIAN16(x) __builtin_bswap16(x)
#else
#define BIG_ENDIAN16(x) (x)
#endif

/* A full socket's inode number: SOCK_INODE(sk->sk_socket)->i_ino, as sock_i_ino() reads it. */
static __always_inline u32 full_socket_inode(const void *sk)
{
    void *socket = 0;
    u64 ino = 0;
    COPY(socket, sk, OFF_SK_SOCKET);
    if (!socket)
        return 0;
    COPY(ino, socket, OFF_SOCKET_ALLOC_INODE - OFF_SOCKET_ALLOC_SOCKET + OFF_INODE_INO);
    return (u32)ino;          /* inet_diag's idiag_inode is 32 bits too */
}

/* A timewait socket: its substate, and the ms left before its timer ends it. */
static __always_inline u8 timewait_fill(const void *sk, struct diag_record *r)
{
    u8 substate = TCP_TIME_WAIT;
    u64 expires = 0;
    COPY(substate, sk, OFF_TW_SUBSTATE);
    COPY(expires, sk, OFF_TW_TIMER + OFF_TIMER_EXPIRES);
    s64 left = (s64)(expires - bpf_jiffies64());
    r->expires = left > 0 ? (u32)((u64)left * DIAG_TICK_NS / 1000000) : 0;
    return substate;
}

int socket_diag(struct tcp_iter_ctx *ctx)
{
    void *sk = ctx->sk_common;
    if (!sk)
        return 0;
    struct diag_record r = {.nlmsg_len = sizeof(r), .nlmsg_type = TCPDIAG_GETSOCK, .nlmsg_flags = NLM_F_MULTI};
    u8 state = COMMON(u8, sk, OFF_SKC_STATE);
    u16 family = COMMON(u16, sk, OFF_SKC_FAMILY);
    r.family = family;
    r.uid = ctx->uid;
    r.sport = BIG_ENDIAN16(COMMON(u16, sk, OFF_SKC_NUM));   /* skc_num is in host order */
    r.dport = COMMON(u16, sk, OFF_SKC_DPORT);
    if (family == AF_INET6_FAMILY) {
        COPY(r.src, sk, OFF_SKC_V6_RCV_SADDR);
        COPY(r.dst, sk, OFF_SKC_V6_DADDR);
    } else {
        r.src[0] = COMMON(u32, sk, OFF_SKC_RCV_SADDR);
        r.dst[0] = COMMON(u32, sk, OFF_SKC_DADDR);
    }
    if (state == TCP_TIME_WAIT) {
        state = timewait_fill(sk, &r);
    } else if (state == TCP_NEW_SYN_RECV) {
        state = TCP_SYN_RECV;
    } else {
        r.inode = full_socket_inode(sk);
        if (state == TCP_LISTEN) {
            COPY(r.rqueue, sk, OFF_SK_ACK_BACKLOG);
            COPY(r.wqueue, sk, OFF_SK_MAX_ACK_BACKLOG);
        } else if (state == TCP_CLOSE_WAIT) {
            u64 cookie = diag_socket_cookie(sk);
            r.cookie[0] = (u32)cookie;
            r.cookie[1] = (u32)(cookie >> 32);
        }
    }
    r.state = state;
    diag_seq_write(COMMON(void *, ctx->meta, 0), &r, sizeof(r));
    return 0;
}
#endif /* SOCKET_ITER */
