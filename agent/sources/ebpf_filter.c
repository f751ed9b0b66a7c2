// natlens conntrack filter: a socket filter on the agent's ctnetlink socket.
//
// The kernel runs it on every conntrack NEW/DESTROY event before queueing the message
// on the socket. It walks the nfnetlink attributes, drops every event that is not a
// DNAT decision (original destination == reply source), counts DNAT decisions per
// (protocol, VIP:port, endpoint:port) in a per-CPU map and returns 0, so nothing is
// copied to the socket. In decision mode it also writes the DNAT events that a hash of
// the connection's tuple selects (1 in SAMPLE) to a ring buffer, already parsed, so
// user space reads fixed records instead of decoding netlink messages.
//
// Python decodes these structs in ebpf.py (same folder); keep the two in step.
// Only UAPI headers: the program must compile without a matching kernel tree.
#include <uapi/linux/bpf.h>
#include "ctnetlink_walk.h"


struct seen_key {
    u32 ct_id;
    u16 zone;
    u16 pad;
};

struct config {
    u32 decisions;  // 1: pass selected DNAT events to user space
    u32 sample;     // pass 1 in SAMPLE (by tuple hash); 0 or 1: all
    u32 seed;
    u32 pad;
};

// Indexes into stats; ebpf.py names them in the same order.
enum {
    ST_EVENTS, ST_NEW, ST_DESTROY, ST_NON_DNAT, ST_MAP_FULL, ST_SAMPLED_OUT, ST_PASSED,
    ST_MALFORMED, ST_RING_FULL, ST_MAX
};


BPF_TABLE_PINNED("percpu_hash", struct nl_key, struct nl_val, counters, MAX_KEYS,
                 "__PIN__/counters");
BPF_TABLE_PINNED("lru_hash", struct seen_key, u64, seen, MAX_SEEN, "__PIN__/seen");
BPF_TABLE_PINNED("percpu_array", u32, u64, stats, ST_MAX, "__PIN__/stats");
// meta[0]: the epoch, a random id the agent writes when it creates the maps. Counters
// are cumulative within an epoch, which lets the collector count each exactly once.
BPF_TABLE_PINNED("array", u32, u64, meta, 2, "__PIN__/meta");
BPF_ARRAY(config, struct config, 1);

// One decision as user space reads it from the ring buffer (ebpf.py: RECORD).
struct decision_rec {
    u64 boot_ns;    // bpf_ktime_get_boot_ns() when the event passed the filter
    u8 kind;        // 0 new, 1 destroy
    u8 family;
    struct parsed p;
};
BPF_PERCPU_ARRAY(scratch, struct decision_rec, 1);
BPF_RINGBUF_OUTPUT(decisions, RING_PAGES);

static __always_inline void bump(u32 idx) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += 1;
}


int ct_filter(struct __sk_buff *skb) {
    u8 hdr[NLMSG_HDRLEN + NFGEN_HDRLEN];
    u32 zero = 0;
    bump(ST_EVENTS);
    if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)) < 0) {
        bump(ST_MALFORMED);
        return 0;
    }
    u32 msglen = *(u32 *)hdr;
    u16 type = *(u16 *)(hdr + 4);
    u8 family = hdr[NLMSG_HDRLEN];
    if ((type >> 8) != NFNL_SUBSYS_CTNETLINK)
        return 0;
    if (msglen > skb->len || msglen < sizeof(hdr)) {  // the kernel never truncates one
        bump(ST_MALFORMED);
        return 0;
    }
    int destroy = (type & 0xff) == IPCTNL_MSG_CT_DELETE;
    if (!destroy && (type & 0xff) != IPCTNL_MSG_CT_NEW)
        return 0;

    struct decision_rec *rec = scratch.lookup(&zero);
    if (!rec)
        return 0;
    __builtin_memset(rec, 0, sizeof(*rec));
    struct parsed *m = &rec->p;
    if (walk_event(skb, msglen, destroy, m) < 0) {
        bump(ST_MALFORMED);
        return 0;
    }

    struct tuple *orig = &m->orig;
    struct nl_key key = {};
    int kind = dnat_key(family, m, &key);
    if (kind == KEY_OTHER_PROTO)
        return 0;
    if (kind == KEY_NOT_DNAT) {
        bump(ST_NON_DNAT);
        return 0;
    }
    struct seen_key sk = {.ct_id = m->ct_id, .zone = m->zone};
    struct nl_val add = {};
    if (destroy)
        end_value(m, &add);
    else
        add.connections = 1;

    struct nl_val *v = counters.lookup(&key);
    if (!v) {
        struct nl_val init = {};
        int err = counters.insert(&key, &init);  // NOEXIST: another CPU may have won
        v = counters.lookup(&key);
        if (!v && err) {
            bump(ST_MAP_FULL);
            goto decide;
        }
    }
    if (v)
        add_value(v, &add);
decide:
    if (destroy) {
        bump(ST_DESTROY);
        seen.delete(&sk);
    } else {
        u64 now = bpf_ktime_get_boot_ns();
        bump(ST_NEW);
        seen.update(&sk, &now);
    }
    struct config *cfg = config.lookup(&zero);
    if (!cfg || !cfg->decisions)
        return 0;
    if (cfg->sample > 1 && tuple_hash(orig, cfg->seed) % cfg->sample != 0) {
        bump(ST_SAMPLED_OUT);
        return 0;
    }
    rec->boot_ns = bpf_ktime_get_boot_ns();
    rec->kind = destroy;
    rec->family = family;
    // Wake the agent once per WAKE_EVERY records on this CPU, not whenever it has caught
    // up: it drains the ring on a timer as well (ebpf.py: poll), and at 30,000/s a
    // wake-up per record cost it more than the record itself.
    u32 passed_idx = ST_PASSED;
    u64 *passed = stats.lookup(&passed_idx);
    u64 wake = passed && (*passed + 1) % WAKE_EVERY == 0 ? BPF_RB_FORCE_WAKEUP
                                                          : BPF_RB_NO_WAKEUP;
    if (decisions.ringbuf_output(rec, sizeof(*rec), wake) < 0) {
        bump(ST_RING_FULL);
        return 0;
    }
    if (passed)
        *passed += 1;
    return 0;
}
