/*
 * tcpwatch: TCP state transitions and time in state, aggregated in the kernel.
 *
 * Strategy
 *   The tracepoint sock:inet_sock_set_state (Linux 4.16+) fires on every state change of a
 *   full TCP socket. For each event this program bumps a per-CPU counter for the (from, to)
 *   pair. It also remembers in an LRU hash, keyed by the socket's address, when the socket
 *   entered its state. When the socket leaves that state, the program adds the time spent to
 *   a per-CPU log2 histogram of that state. User space reads the maps only when Prometheus
 *   scrapes. Nothing crosses to user space per event, unless EMIT_EVENTS is defined (the
 *   `tcpwatch trace` command).
 *
 *   Only tracepoint arguments are read, never a field of struct sock, and their layout comes
 *   from tracefs. So the program is correct on kernels whose headers do not match exactly.
 *
 *   CLOSE_WAIT: a leaked socket never leaves CLOSE_WAIT, so its histogram never sees it.
 *   Entry times of sockets now in CLOSE_WAIT are therefore also kept in a hash keyed by the
 *   connection's 4-tuple. User space joins it to inet_diag's sockets to give exact ages.
 *
 *   TIME_WAIT: timewait sockets are not full sockets. The tracepoint shows FIN_WAIT2 -> CLOSE
 *   (or CLOSING/FIN_WAIT1 -> CLOSE) when tcp_time_wait() replaces the socket, and nothing
 *   when the timewait socket dies. With TRACK_TIME_WAIT defined, timer tracepoints fill the
 *   gap:
 *     - tcp_time_wait() arms the timewait timer (timer:timer_start with
 *       function == tw_timer_handler) right before tcp_done() fires ... -> CLOSE on the same
 *       CPU. A per-CPU stash pairs the two, linking the timer to the 4-tuple.
 *     - timer:timer_expire_entry of that timer is a normal death after 2MSL.
 *     - A new connection on the same 4-tuple (CLOSE -> SYN_SENT, SYN_SENT -> ESTABLISHED,
 *       LISTEN -> SYN_RECV) is an early death by reuse. It is seen up to one RTT late when
 *       connect() picked the port itself.
 *   Limits: a timewait socket killed by an RST is never seen to die, so its entry ages out of
 *   the LRU. A timewait socket that stands in for an orphaned FIN_WAIT2 socket (substate
 *   fin_wait2) is timed as time_wait too.
 */

#include <uapi/linux/in.h>

/* tcp:tcp_send_reset has a field of type enum sk_rst_reason (Linux 6.10+), which older headers
 * lack. bcc writes the tracepoint's argument struct from tracefs, so name a 4-byte enum of
 * our own for it: the field is never read. */
#define sk_rst_reason tcpwatch_sk_rst_reason
enum tcpwatch_sk_rst_reason { TCPWATCH_SK_RST_REASON_UNREAD = 0 };

#ifndef MAX_SOCKETS
#define MAX_SOCKETS 65536   /* entries, per LRU map; 1 .. 16M */
#endif
#ifndef TW_PAIR_WINDOW_NS
#define TW_PAIR_WINDOW_NS 100000   /* ns between timer_start and the -> CLOSE event it pairs with */
#endif

#define NSTATES 16          /* kernel TCP states fit in 4 bits (TCP_MAX_STATES = 14) */
#define SLOTS 64            /* log2 slots of nanoseconds: slot k holds [2^(k-1), 2^k) ns */

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10
#define TCP_CLOSING 11

/* Indexes of the counters array; mirrored in tcpwatch/sources/bpf.py. */
#define C_UNKNOWN_SOCKET 0    /* left a state we never saw it enter (before attach, or evicted) */
#define C_RETRANSMITS 1
#define C_RESETS_SENT 2
#define C_RESETS_RECEIVED 3
#define C_TW_UNKNOWN 4        /* a timewait timer expired that we never saw armed */
#define C_MAX 5

struct entered {
    u64 ns;                   /* bpf_ktime_get_ns() when the socket entered `state` */
    u32 state;
    u32 pad;
};

/* A connection as user space sees it in inet_diag: local first; IPv4 uses 4 bytes. */
struct tuple {
    u16 family;
    u16 sport;                /* host byte order */
    u16 dport;
    u16 pad;
    u8 saddr[16];
    u8 daddr[16];
};

BPF_TABLE("lru_hash", u64, struct entered, socket_states, MAX_SOCKETS);
BPF_TABLE("lru_hash", struct tuple, u64, close_wait_entered, MAX_SOCKETS);
BPF_PERCPU_ARRAY(transitions, u64, NSTATES * NSTATES);      /* index from * NSTATES + to */
BPF_PERCPU_ARRAY(duration_slots, u64, NSTATES * SLOTS);     /* index state * SLOTS + slot */
BPF_PERCPU_ARRAY(duration_sum_ns, u64, NSTATES);
BPF_PERCPU_ARRAY(counters, u64, C_MAX);

#ifdef EMIT_EVENTS
struct event {
    u64 ts_ns;
    u64 dwell_ns;             /* time in oldstate, 0 when unknown */
    struct tuple tuple;
    u32 oldstate;
    u32 newstate;
};
BPF_PERF_OUTPUT(events);
#endif

static __always_inline void bump(u32 index)
{
    u64 *value = counters.lookup(&index);
    if (value)
        (*value)++;
}

static __always_inline void observe(u32 state, u64 dwell_ns)
{
    u32 index = state * SLOTS + bpf_log2l(dwell_ns);
    u64 *slot = duration_slots.lookup(&index);
    if (slot)
        (*slot)++;
    u64 *sum = duration_sum_ns.lookup(&state);
    if (sum)
        *sum += dwell_ns;
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
struct tw_entry {
    u64 ns;                   /* when the timewait socket was created */
    u64 timer;                /* address of its tw_timer */
};
struct tw_armed {
    u64 timer;
    u64 ns;
};
BPF_TABLE("lru_hash", struct tuple, struct tw_entry, tw_by_tuple, MAX_SOCKETS);
BPF_TABLE("lru_hash", u64, struct tuple, tw_by_timer, MAX_SOCKETS);
BPF_PERCPU_ARRAY(tw_last_armed, struct tw_armed, 1);

/* A timewait timer armed on this CPU just now belongs to the socket going -> CLOSE now. */
static __always_inline void tw_pair(struct tuple *t, u64 now)
{
    u32 zero = 0;
    struct tw_armed *armed = tw_last_armed.lookup(&zero);
    if (!armed || !armed->timer || now - armed->ns > TW_PAIR_WINDOW_NS)
        return;
    struct tw_entry entry = {.ns = armed->ns, .timer = armed->timer};
    tw_by_tuple.update(t, &entry);
    tw_by_timer.update(&entry.timer, t);
    armed->timer = 0;
}

/* A new connection on a 4-tuple that a timewait socket held: that socket was reused early. */
static __always_inline void tw_reused(struct tuple *t, u64 now)
{
    struct tw_entry *entry = tw_by_tuple.lookup(t);
    if (!entry)
        return;
    observe(TCP_TIME_WAIT, now - entry->ns);
    u64 timer = entry->timer;
    tw_by_timer.delete(&timer);
    tw_by_tuple.delete(t);
}

TRACEPOINT_PROBE(timer, timer_start)
{
    if ((u64)args->function != TW_TIMER_HANDLER)
        return 0;
    u32 zero = 0;
    struct tw_armed *armed = tw_last_armed.lookup(&zero);
    if (armed) {
        armed->timer = (u64)args->timer;
        armed->ns = bpf_ktime_get_ns();
    }
    return 0;
}

TRACEPOINT_PROBE(timer, timer_expire_entry)
{
    if ((u64)args->function != TW_TIMER_HANDLER)
        return 0;
    u64 timer = (u64)args->timer;
    struct tuple *t = tw_by_timer.lookup(&timer);
    if (!t) {
        bump(C_TW_UNKNOWN);
        return 0;
    }
    struct tuple key = *t;
    struct tw_entry *entry = tw_by_tuple.lookup(&key);
    if (entry && entry->timer == timer) {
        observe(TCP_TIME_WAIT, bpf_ktime_get_ns() - entry->ns);
        tw_by_tuple.delete(&key);
    }
    tw_by_timer.delete(&timer);
    return 0;
}
#endif /* TRACK_TIME_WAIT */

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u32 oldstate = args->oldstate;
    u32 newstate = args->newstate;
    if (oldstate >= NSTATES || newstate >= NSTATES || !port_tracked(args->sport, args->dport))
        return 0;
    u64 now = bpf_ktime_get_ns();

    u32 pair = oldstate * NSTATES + newstate;
    u64 *count = transitions.lookup(&pair);
    if (count)
        (*count)++;

    u64 dwell_ns = 0;
    if (oldstate != newstate) {   /* a self-transition keeps the clock running */
        u64 sk = (u64)args->skaddr;
        struct entered *entry = socket_states.lookup(&sk);
        if (entry && entry->state == oldstate) {
            dwell_ns = now - entry->ns;
            observe(oldstate, dwell_ns);
        } else if (oldstate != TCP_CLOSE && oldstate != TCP_LISTEN) {
            bump(C_UNKNOWN_SOCKET);   /* a new child's first event is LISTEN -> SYN_RECV */
        }
        if (newstate == TCP_CLOSE) {
            if (entry)
                socket_states.delete(&sk);
        } else if (entry) {           /* in place: cheaper than replacing the element */
            entry->ns = now;
            entry->state = newstate;
        } else {
            struct entered fresh = {.ns = now, .state = newstate};
            socket_states.update(&sk, &fresh);
        }
    }

    /* The 4-tuple is built only for the few transitions that need it. */
    int close_wait_edge = (newstate == TCP_CLOSE_WAIT) != (oldstate == TCP_CLOSE_WAIT);
#ifdef TRACK_TIME_WAIT
    int tw_edge = (newstate == TCP_CLOSE &&
                   (oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING || oldstate == TCP_FIN_WAIT1)) ||
                  (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) ||
                  (oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED) ||
                  (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
#else
    int tw_edge = 0;
#endif
#ifdef EMIT_EVENTS
    int want_tuple = 1;
#else
    int want_tuple = close_wait_edge || tw_edge;
#endif
    if (!want_tuple)
        return 0;
    struct tuple t = {.family = args->family, .sport = args->sport, .dport = args->dport};
    if (args->family == AF_INET) {
        __builtin_memcpy(t.saddr, args->saddr, 4);
        __builtin_memcpy(t.daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(t.saddr, args->saddr_v6, 16);
        __builtin_memcpy(t.daddr, args->daddr_v6, 16);
    }
    if (close_wait_edge) {
        if (newstate == TCP_CLOSE_WAIT)
            close_wait_entered.update(&t, &now);
        else
            close_wait_entered.delete(&t);
    }

#ifdef TRACK_TIME_WAIT
    if (tw_edge) {
        if (newstate == TCP_CLOSE)
            tw_pair(&t, now);
        else
            tw_reused(&t, now);
    }
#endif

#ifdef EMIT_EVENTS
    struct event ev = {.ts_ns = now, .dwell_ns = dwell_ns, .tuple = t,
                       .oldstate = oldstate, .newstate = newstate};
    events.perf_submit(args, &ev, sizeof(ev));
#endif
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    bump(C_RETRANSMITS);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
    bump(C_RESETS_SENT);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    bump(C_RESETS_RECEIVED);
    return 0;
}
