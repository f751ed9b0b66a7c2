// natlens hook: a BPF netfilter program that sees each new conntrack entry once.
//
// Attached in the node's network namespace at LOCAL_IN and POST_ROUTING, IPv4 and IPv6,
// one priority step before conntrack confirms the entry (hook_loader.py: HOOKS).
// By then the DNAT decision is made (the reply tuple names the endpoint) and the entry
// is not yet confirmed: the packet that created it is the only one that meets it
// unconfirmed, so each decision is counted once. Every other packet leaves after one
// load of skb->_nfct and a compare.
//
// Counts go to per-CPU maps and, unless the agent asked for counts only, a compact
// record per connection to a ring buffer. Maps and the link are pinned in bpffs, so the
// kernel keeps counting and recording while no agent runs.
//
// A second program, natlens_closes, is a socket filter on the agent's ctnetlink socket
// for DESTROY events only: it adds each DNAT entry's end (bytes, packets, duration) to
// the same counters and writes a close record carrying the id its start record had
// (the `open` map), then returns 0 so no message is queued.
//
// Compiled once at install time (scripts/build_bpf.sh) with clang's CO-RE relocations:
// the structures below name only the fields used, and libbpf moves each access to the
// running kernel's offset from /sys/kernel/btf/vmlinux. No kernel headers at run time.
// hook_loader.py and decode/hook_record.py read these structs; keep them in step.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
#include "ctnetlink_walk.h"

#ifndef MAX_KEYS
#define MAX_KEYS (1 << 18)
#endif
#ifndef MAX_OPEN
#define MAX_OPEN (1 << 18)
#endif
#define RING_BYTES (16 << 20)   // 139,810 records; the agent may set another size
#define NF_ACCEPT 1
#define IP_CT_NEW 2
#define NFCT_INFOMASK 7UL
#define IPS_CONFIRMED (1UL << 3)
#define IPS_DST_NAT (1UL << 5)

// Only the fields read; CO-RE matches them by name in the kernel's BTF.
union nf_inet_addr {
    __u32 all[4];
} __attribute__((preserve_access_index));

union nf_conntrack_man_proto {
    __be16 all;
} __attribute__((preserve_access_index));

struct nf_conntrack_man {
    union nf_inet_addr u3;
    union nf_conntrack_man_proto u;
    __u16 l3num;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple {
    struct nf_conntrack_man src;
    struct {
        union nf_inet_addr u3;
        union {
            __be16 all;
        } u;
        __u8 protonum;
    } dst;
} __attribute__((preserve_access_index));

struct nf_conntrack_tuple_hash {
    struct nf_conntrack_tuple tuple;
} __attribute__((preserve_access_index));

struct nf_conntrack_zone {
    __u16 id;
} __attribute__((preserve_access_index));

struct nf_conn {
    struct nf_conntrack_zone zone;
    struct nf_conntrack_tuple_hash tuplehash[2];
    unsigned long status;
} __attribute__((preserve_access_index));

struct sk_buff {
    unsigned long _nfct;
} __attribute__((preserve_access_index));

struct nf_hook_state {
    __u8 hook;
    __u8 pf;
} __attribute__((preserve_access_index));

// The program's context (include/linux/filter.h); its offsets are fixed by the ABI.
struct bpf_nf_ctx {
    const struct nf_hook_state *state;
    struct sk_buff *skb;
};

struct config {
    __u32 records;  // 1: a ring record per connection (0: counts only)
    __u32 sample;   // records for 1 in SAMPLE connections (by tuple hash); 0 or 1: all
    __u32 seed;
    __u32 closes;   // 1: the close filter runs, so keep each record's id in `open`
};

// One connection's start or end as user space reads it from the ring
// (decode/hook_record.py: ENTRY).
struct hook_rec {
    __u64 boot_ns;      // bpf_ktime_get_boot_ns() at the decision (or the close)
    __u8 family;
    __u8 proto;
    __u16 zone;
    __be16 sport;       // client port
    __be16 dport;       // service port
    __be16 ep_port;     // endpoint port (reply source)
    __u8 kind;          // 0: the decision, 1: the close
    __u8 hook;          // the netfilter hook that saw the decision
    __u8 src[16];       // client
    __u8 dst[16];       // service address
    __u8 ep[16];        // endpoint (reply source)
    __u32 ct_id;        // the entry's address hashed with the epoch's seed (0: unknown)
    __u64 orig_packets; // a close's conntrack counters (nf_conntrack_acct)
    __u64 orig_bytes;
    __u64 reply_packets;
    __u64 reply_bytes;
    __u64 duration_ns;  // a close's stop - start (nf_conntrack_timestamp)
};
_Static_assert(sizeof(struct hook_rec) == 112, "hook_rec is 112 bytes");

// An open connection's original tuple, for its close record to find its id.
struct open_key {
    __u8 family;
    __u8 proto;
    __u16 zone;
    __be16 sport;
    __be16 dport;
    __u8 src[16];
    __u8 dst[16];
};

// Indexes into stats; hook_loader.py names them in the same order.
enum {
    ST_NEW, ST_NON_DNAT, ST_MAP_FULL, ST_SAMPLED_OUT, ST_RECORDED, ST_RING_FULL,
    ST_CLOSED, ST_CLOSE_MALFORMED, ST_CLOSE_UNKNOWN, ST_MAX
};

// Not preallocated: a preallocated map holds MAX_KEYS values for every CPU from the
// start (29 MB on 2 CPUs, 1.9 GB on 128) and took 0.25 s of the agent's start to make;
// a node has as many keys as endpoints of its services.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, MAX_KEYS);
    __type(key, struct nl_key);
    __type(value, struct nl_val);
} counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, ST_MAX);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

// meta[0]: the epoch, written by the agent that created the maps (counters are
// cumulative within it); meta[1]: the digest of the object the pinned link runs;
// meta[2]: the namespace's conntrack clash count when the epoch began.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} meta SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, RING_BYTES);
} records SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, MAX_OPEN);
    __type(key, struct open_key);
    __type(value, __u32);
} open SEC(".maps");

// A DESTROY message parsed into map memory (the walk's state stays small for the
// verifier, as in ebpf_filter.c).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct parsed);
} scratch SEC(".maps");

static __always_inline void bump(__u32 idx) {
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += 1;
}

// Add *add to the key's counters on this CPU (creating the key if need be).
static __always_inline void count(struct nl_key *key, struct nl_val *add) {
    struct nl_val *v = bpf_map_lookup_elem(&counters, key);
    if (!v) {
        if (bpf_map_update_elem(&counters, key, add, BPF_NOEXIST) == 0)
            return;
        v = bpf_map_lookup_elem(&counters, key);  // another CPU added it meanwhile
        if (!v) {
            bump(ST_MAP_FULL);
            return;
        }
    }
    add_value(v, add);
}

SEC("netfilter")
int natlens_hook(struct bpf_nf_ctx *ctx) {
    struct sk_buff *skb = ctx->skb;
    unsigned long nfct = skb->_nfct;  // a trusted pointer: a direct load, no helper call
    if ((nfct & NFCT_INFOMASK) != IP_CT_NEW || nfct < 8)
        return NF_ACCEPT;  // every packet but the first of a connection stops here
    struct nf_conn *ct = (struct nf_conn *)(nfct & ~NFCT_INFOMASK);
    unsigned long status = BPF_CORE_READ(ct, status);
    if (status & IPS_CONFIRMED)
        return NF_ACCEPT;  // a retransmitted first packet: already counted
    bump(ST_NEW);
    if (!(status & IPS_DST_NAT)) {
        bump(ST_NON_DNAT);
        return NF_ACCEPT;
    }

    struct nl_key key = {};
    __be16 sport = 0, dport = 0, ep_port = 0;
    __u32 src[4] = {}, dst[4] = {}, ep[4] = {};
    __u16 l3 = BPF_CORE_READ(ct, tuplehash[0].tuple.src.l3num);
    key.family = l3;
    key.proto = BPF_CORE_READ(ct, tuplehash[0].tuple.dst.protonum);
    BPF_CORE_READ_INTO(&sport, ct, tuplehash[0].tuple.src.u.all);
    BPF_CORE_READ_INTO(&dport, ct, tuplehash[0].tuple.dst.u.all);
    BPF_CORE_READ_INTO(&ep_port, ct, tuplehash[1].tuple.src.u.all);
    BPF_CORE_READ_INTO(&dst, ct, tuplehash[0].tuple.dst.u3.all);
    BPF_CORE_READ_INTO(&ep, ct, tuplehash[1].tuple.src.u3.all);
    if (l3 != 10) {  // IPv4: only the first word is the address
        dst[1] = dst[2] = dst[3] = 0;
        ep[1] = ep[2] = ep[3] = 0;
    }
    key.vip_port = __builtin_bswap16(dport);
    key.ep_port = __builtin_bswap16(ep_port);
    __builtin_memcpy(key.vip, dst, 16);
    __builtin_memcpy(key.ep, ep, 16);
    struct nl_val one = {.connections = 1};
    count(&key, &one);

    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg || !cfg->records)
        return NF_ACCEPT;
    BPF_CORE_READ_INTO(&src, ct, tuplehash[0].tuple.src.u3.all);
    if (l3 != 10)
        src[1] = src[2] = src[3] = 0;
    if (cfg->sample > 1 && hash_words(cfg->seed, src, dst, sport, dport, key.proto) %
                               cfg->sample) {
        bump(ST_SAMPLED_OUT);
        return NF_ACCEPT;
    }
    struct hook_rec *r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
    if (!r) {
        bump(ST_RING_FULL);
        return NF_ACCEPT;
    }
    const struct nf_hook_state *state = ctx->state;
    __u64 addr = (__u64)ct;
    r->boot_ns = bpf_ktime_get_boot_ns();
    r->family = l3;
    r->proto = key.proto;
    r->zone = bpf_core_field_exists(ct->zone) ? BPF_CORE_READ(ct, zone.id) : 0;
    r->sport = sport;
    r->dport = dport;
    r->ep_port = ep_port;
    r->hook = BPF_CORE_READ(state, hook);
    __builtin_memcpy(r->src, src, 16);
    __builtin_memcpy(r->dst, dst, 16);
    __builtin_memcpy(r->ep, ep, 16);
    r->ct_id = fmix(mix(mix(cfg->seed, (__u32)addr), (__u32)(addr >> 32)));
    r->kind = 0;
    r->orig_packets = r->orig_bytes = r->reply_packets = r->reply_bytes = 0;
    r->duration_ns = 0;
    __u32 id = r->ct_id;
    struct open_key ok = {.family = l3, .proto = key.proto, .zone = r->zone,
                          .sport = sport, .dport = dport};
    // No wake-up: the agent drains the ring on its own beat, so a flood costs the
    // kernel no interrupt work per record.
    bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    bump(ST_RECORDED);
    if (cfg->closes) {  // only the close filter reads `open`: no update without it
        __builtin_memcpy(ok.src, src, 16);
        __builtin_memcpy(ok.dst, dst, 16);
        bpf_map_update_elem(&open, &ok, &id, BPF_ANY);
    }
    return NF_ACCEPT;
}

// DESTROY events on the agent's ctnetlink socket: the end of each DNAT entry.
SEC("socket")
int natlens_closes(struct __sk_buff *skb) {
    u8 hdr[NLMSG_HDRLEN + NFGEN_HDRLEN];
    __u32 zero = 0;
    if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)) < 0)
        return 0;
    u32 msglen = *(u32 *)hdr;
    u16 type = *(u16 *)(hdr + 4);
    u8 family = hdr[NLMSG_HDRLEN];
    if ((type >> 8) != NFNL_SUBSYS_CTNETLINK || (type & 0xff) != IPCTNL_MSG_CT_DELETE)
        return 0;
    struct parsed *m = bpf_map_lookup_elem(&scratch, &zero);
    if (!m)
        return 0;
    __builtin_memset(m, 0, sizeof(*m));
    if (msglen > skb->len || msglen < sizeof(hdr) || walk_event(skb, msglen, 1, m) < 0) {
        bump(ST_CLOSE_MALFORMED);
        return 0;
    }
    struct tuple *orig = &m->orig, *reply = &m->reply;
    struct nl_key key = {};
    if (dnat_key(family, m, &key) != KEY_OK)
        return 0;
    struct nl_val add = {};
    end_value(m, &add);
    count(&key, &add);
    bump(ST_CLOSED);

    struct open_key ok = {.family = family, .proto = orig->proto, .zone = m->zone,
                          .sport = orig->sport, .dport = orig->dport};
    __builtin_memcpy(ok.src, orig->src, 16);
    __builtin_memcpy(ok.dst, orig->dst, 16);
    __u32 *idp = bpf_map_lookup_elem(&open, &ok);
    __u32 id = idp ? *idp : 0;
    if (idp)
        bpf_map_delete_elem(&open, &ok);
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg || !cfg->records)
        return 0;
    if (!idp) {  // sampled out, or opened before the hook was attached
        bump(ST_CLOSE_UNKNOWN);
        return 0;
    }
    struct hook_rec *r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
    if (!r) {
        bump(ST_RING_FULL);
        return 0;
    }
    r->boot_ns = bpf_ktime_get_boot_ns();
    r->family = family;
    r->proto = orig->proto;
    r->zone = m->zone;
    r->sport = orig->sport;
    r->dport = orig->dport;
    r->ep_port = reply->sport;
    r->kind = 1;
    r->hook = 0;
    __builtin_memcpy(r->src, orig->src, 16);
    __builtin_memcpy(r->dst, orig->dst, 16);
    __builtin_memcpy(r->ep, reply->src, 16);
    r->ct_id = id;
    r->orig_packets = m->counters_orig[0];
    r->orig_bytes = m->counters_orig[1];
    r->reply_packets = m->counters_reply[0];
    r->reply_bytes = m->counters_reply[1];
    r->duration_ns = add.duration_ns;
    bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
