// natlens hook: a BPF netfilter program that sees each new conntrack entry once.
//
// Attached in the node's network namespace at LOCAL_IN and POST_ROUTING, IPv4 and IPv6,
// one priority step before conntrack confirms the entry (NF_IP_PRI_CONNTRACK_CONFIRM - 1).
// By then the DNAT decision is made (the reply tuple names the endpoint) and the entry
// is not yet confirmed: the packet that created it is the only one that meets it
// unconfirmed, so each decision is counted once. Every other packet leaves after one
// load of skb->_nfct and a compare.
//
// Counts go to per-CPU maps and, unless the agent asked for counts only, a compact
// record per connection to a ring buffer. Maps and the link are pinned in bpffs, so the
// kernel keeps counting and recording while no agent runs.
//
// Compiled once at install time (scripts/build_bpf.sh) with clang's CO-RE relocations:
// the structures below name only the fields used, and libbpf moves each access to the
// running kernel's offset from /sys/kernel/btf/vmlinux. No kernel headers at run time.
// hook_loader.py and decode/hook_record.py read these structs; keep them in step.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#ifndef MAX_KEYS
#define MAX_KEYS (1 << 18)
#endif
#define RING_BYTES (16 << 20)   // 200,000 records; the agent may set another size
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

// Counter key and value: the same layout as the eBPF socket filter's (ebpf_filter.c),
// so one reader decodes both. Only `connections` is counted here.
struct nl_key {
    __u8 family;
    __u8 proto;
    __u16 vip_port;   // host order
    __u16 ep_port;    // host order
    __u16 pad;
    __u8 vip[16];
    __u8 ep[16];
};

struct nl_val {
    __u64 connections;
    __u64 closed;
    __u64 orig_packets;
    __u64 orig_bytes;
    __u64 reply_packets;
    __u64 reply_bytes;
    __u64 duration_ns;
};

struct config {
    __u32 records;  // 1: a ring record per connection (0: counts only)
    __u32 sample;   // records for 1 in SAMPLE connections (by tuple hash); 0 or 1: all
    __u32 seed;
    __u32 pad;
};

// One connection as user space reads it from the ring (decode/hook_record.py: RECORD).
struct hook_rec {
    __u64 boot_ns;      // bpf_ktime_get_boot_ns() at the decision
    __u8 family;
    __u8 proto;
    __u16 zone;
    __be16 sport;       // client port
    __be16 dport;       // service port
    __be16 ep_port;     // endpoint port (reply source)
    __u16 hook;         // pf << 8 | netfilter hook number
    __u8 src[16];       // client
    __u8 dst[16];       // service address
    __u8 ep[16];        // endpoint (reply source)
    __u32 ct_id;        // the entry's address hashed with the epoch's seed
    __u32 pad;
    __u32 pad2;
};
_Static_assert(sizeof(struct hook_rec) == 80, "hook_rec is 80 bytes");

// Indexes into stats; hook_loader.py names them in the same order.
enum {
    ST_NEW, ST_NON_DNAT, ST_MAP_FULL, ST_SAMPLED_OUT, ST_RECORDED, ST_RING_FULL, ST_MAX
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
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
// cumulative within it); meta[1]: the digest of the object the pinned link runs.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
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

static __always_inline void bump(__u32 idx) {
    __u64 *v = bpf_map_lookup_elem(&stats, &idx);
    if (v)
        *v += 1;
}

static __always_inline __u32 mix(__u32 h, __u32 k) {
    k *= 0xcc9e2d51;
    k = (k << 15) | (k >> 17);
    k *= 0x1b873593;
    h ^= k;
    h = (h << 13) | (h >> 19);
    return h * 5 + 0xe6546b64;
}

static __always_inline __u32 fin(__u32 h) {
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

static __always_inline void count(struct nl_key *key) {
    struct nl_val *v = bpf_map_lookup_elem(&counters, key);
    if (v) {
        v->connections += 1;  // this CPU's slot: no other writer
        return;
    }
    struct nl_val one = {.connections = 1};
    if (bpf_map_update_elem(&counters, key, &one, BPF_NOEXIST) == 0)
        return;
    v = bpf_map_lookup_elem(&counters, key);  // another CPU added it meanwhile
    if (v)
        v->connections += 1;
    else
        bump(ST_MAP_FULL);
}

SEC("netfilter")
int natlens_hook(struct bpf_nf_ctx *ctx) {
    struct sk_buff *skb = ctx->skb;
    unsigned long nfct = BPF_CORE_READ(skb, _nfct);
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
    count(&key);

    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg || !cfg->records)
        return NF_ACCEPT;
    BPF_CORE_READ_INTO(&src, ct, tuplehash[0].tuple.src.u3.all);
    if (l3 != 10)
        src[1] = src[2] = src[3] = 0;
    if (cfg->sample > 1) {
        __u32 h = cfg->seed;
        h = mix(h, src[0]); h = mix(h, src[1]); h = mix(h, src[2]); h = mix(h, src[3]);
        h = mix(h, dst[0]); h = mix(h, dst[1]); h = mix(h, dst[2]); h = mix(h, dst[3]);
        h = mix(h, ((__u32)sport << 16) | dport);
        h = mix(h, key.proto);
        if (fin(h) % cfg->sample) {
            bump(ST_SAMPLED_OUT);
            return NF_ACCEPT;
        }
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
    r->hook = ((__u16)BPF_CORE_READ(state, pf) << 8) | BPF_CORE_READ(state, hook);
    __builtin_memcpy(r->src, src, 16);
    __builtin_memcpy(r->dst, dst, 16);
    __builtin_memcpy(r->ep, ep, 16);
    r->ct_id = fin(mix(mix(cfg->seed, (__u32)addr), (__u32)(addr >> 32)));
    r->pad = 0;
    r->pad2 = 0;
    // No wake-up: the agent drains the ring on its own beat, so a flood costs the
    // kernel no interrupt work per record.
    bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    bump(ST_RECORDED);
    return NF_ACCEPT;
}

char LICENSE[] SEC("license") = "GPL";
