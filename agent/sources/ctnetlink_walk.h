// Walking a ctnetlink NEW or DESTROY message with bpf_skb_load_bytes, and the counter
// key and value it feeds: shared by the eBPF source's filter (ebpf_filter.c, compiled
// by bcc) and the hook source's programs (hook.bpf.c, compiled by clang at install
// time), so one reader in user space decodes both sources' maps. The includer provides u8,
// u16, u32, u64, bpf_ntohl and bpf_ntohs. UAPI numbers only: no kernel tree needed.
#ifndef NATLENS_CTNETLINK_WALK_H
#define NATLENS_CTNETLINK_WALK_H

#define CTA_TUPLE_ORIG 1
#define CTA_TUPLE_REPLY 2
#define CTA_COUNTERS_ORIG 9
#define CTA_COUNTERS_REPLY 10
#define CTA_ID 12
#define CTA_ZONE 18
#define CTA_TIMESTAMP 20
#define CTA_TUPLE_IP 1
#define CTA_TUPLE_PROTO 2
#define CTA_IP_V4_SRC 1
#define CTA_IP_V4_DST 2
#define CTA_IP_V6_SRC 3
#define CTA_IP_V6_DST 4
#define CTA_PROTO_NUM 1
#define CTA_PROTO_SRC_PORT 2
#define CTA_PROTO_DST_PORT 3
#define CTA_COUNTERS_PACKETS 1
#define CTA_COUNTERS_BYTES 2
#define CTA_TIMESTAMP_START 1
#define CTA_TIMESTAMP_STOP 2
#define NFNL_SUBSYS_CTNETLINK 1
#define IPCTNL_MSG_CT_NEW 0
#define IPCTNL_MSG_CT_DELETE 2
#define NLA_TYPE_MASK 0x3fff
#define NLMSG_HDRLEN 16
#define NFGEN_HDRLEN 4
#define MAX_ATTRS 24

struct tuple {
    u8 src[16];
    u8 dst[16];
    u16 sport;
    u16 dport;
    u8 proto;
};

// What one event says. Parsed into map memory, not the stack: the verifier would
// otherwise follow every combination of attributes seen as a separate state.
struct parsed {
    struct tuple orig;
    struct tuple reply;
    u64 counters_orig[2];   // packets, bytes
    u64 counters_reply[2];
    u64 ts[2];              // start, stop
    u32 ct_id;
    u16 zone;
};

static __always_inline int attr_hdr(struct __sk_buff *skb, u32 off, u16 *len, u16 *type) {
    u16 h[2];
    if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
        return -1;
    *len = h[0];
    *type = h[1] & NLA_TYPE_MASK;
    return h[0] < 4 ? -1 : 0;
}

static __always_inline u64 be64(struct __sk_buff *skb, u32 off) {
    u64 v = 0;
    bpf_skb_load_bytes(skb, off, &v, 8);
    return __builtin_bswap64(v);  // network order; x86-64 and arm64 are little-endian
}

// An IPv4 tuple nest as the kernel writes it (ctnetlink_dump_tuples): TUPLE_IP{V4_SRC,
// V4_DST}, TUPLE_PROTO{NUM, SRC_PORT, DST_PORT}, 48 bytes after the nest's header. Read
// with one load when every header is where that layout puts it (one helper call
// instead of twelve); any other shape goes through the walk in parse_tuple, which
// reads the same values from this one. Header words are len | type << 16 (x86-64 and
// arm64 are little-endian), the type without its flag bits.
#define HDR(len, type) ((len) | (type) << 16)
#define HDR_MASK 0x3fffffff

static __always_inline int tuple_v4(struct __sk_buff *skb, u32 off, struct tuple *t) {
    u32 w[12];
    if (bpf_skb_load_bytes(skb, off, w, sizeof(w)) < 0)
        return -1;
    if ((w[0] & HDR_MASK) != HDR(20, CTA_TUPLE_IP) ||
        (w[1] & HDR_MASK) != HDR(8, CTA_IP_V4_SRC) ||
        (w[3] & HDR_MASK) != HDR(8, CTA_IP_V4_DST) ||
        (w[5] & HDR_MASK) != HDR(28, CTA_TUPLE_PROTO) ||
        (w[6] & HDR_MASK) != HDR(5, CTA_PROTO_NUM) ||
        (w[8] & HDR_MASK) != HDR(6, CTA_PROTO_SRC_PORT) ||
        (w[10] & HDR_MASK) != HDR(6, CTA_PROTO_DST_PORT))
        return -1;
    __builtin_memcpy(t->src, &w[2], 4);
    __builtin_memcpy(t->dst, &w[4], 4);
    t->proto = w[7] & 0xff;
    t->sport = w[9] & 0xffff;   // network order, as the walk loads it
    t->dport = w[11] & 0xffff;
    return 0;
}

static __always_inline int parse_tuple(struct __sk_buff *skb, u32 off, u32 end,
                                       struct tuple *t) {
    u16 len, type, l2, t2;
    if (end - off == 48 && tuple_v4(skb, off, t) == 0)
        return 0;
    for (int i = 0; i < 3; i++) {
        if (off + 4 > end || attr_hdr(skb, off, &len, &type) < 0)
            break;
        u32 o2 = off + 4, e2 = off + len;
        if (type == CTA_TUPLE_IP) {
            for (int j = 0; j < 2; j++) {
                if (o2 + 4 > e2 || attr_hdr(skb, o2, &l2, &t2) < 0)
                    break;
                if (t2 == CTA_IP_V4_SRC)
                    bpf_skb_load_bytes(skb, o2 + 4, t->src, 4);
                else if (t2 == CTA_IP_V4_DST)
                    bpf_skb_load_bytes(skb, o2 + 4, t->dst, 4);
                else if (t2 == CTA_IP_V6_SRC)
                    bpf_skb_load_bytes(skb, o2 + 4, t->src, 16);
                else if (t2 == CTA_IP_V6_DST)
                    bpf_skb_load_bytes(skb, o2 + 4, t->dst, 16);
                o2 += (l2 + 3) & ~3;
            }
        } else if (type == CTA_TUPLE_PROTO) {
            for (int j = 0; j < 3; j++) {
                if (o2 + 4 > e2 || attr_hdr(skb, o2, &l2, &t2) < 0)
                    break;
                if (t2 == CTA_PROTO_NUM)
                    bpf_skb_load_bytes(skb, o2 + 4, &t->proto, 1);
                else if (t2 == CTA_PROTO_SRC_PORT)
                    bpf_skb_load_bytes(skb, o2 + 4, &t->sport, 2);
                else if (t2 == CTA_PROTO_DST_PORT)
                    bpf_skb_load_bytes(skb, o2 + 4, &t->dport, 2);
                o2 += (l2 + 3) & ~3;
            }
        }
        off += (len + 3) & ~3;
    }
    return 0;
}

static __always_inline u32 mix(u32 h, u32 k) {
    k *= 0xcc9e2d51;
    k = (k << 15) | (k >> 17);
    k *= 0x1b873593;
    h ^= k;
    h = (h << 13) | (h >> 19);
    return h * 5 + 0xe6546b64;
}

// murmur3's finalizer: every input bit moves every output bit.
static __always_inline u32 fmix(u32 h) {
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

// murmur3 over an original tuple's words (ports in network order, as the entry and the
// message both hold them): the same connection is selected on NEW and DESTROY, by
// either source.
static __always_inline u32 hash_words(u32 seed, const u32 *src, const u32 *dst,
                                      u16 sport, u16 dport, u8 proto) {
    u32 h = seed;
    h = mix(h, src[0]); h = mix(h, src[1]); h = mix(h, src[2]); h = mix(h, src[3]);
    h = mix(h, dst[0]); h = mix(h, dst[1]); h = mix(h, dst[2]); h = mix(h, dst[3]);
    h = mix(h, ((u32)sport << 16) | dport);
    h = mix(h, proto);
    return fmix(h);
}

static __always_inline u32 tuple_hash(struct tuple *t, u32 seed) {
    u32 s[4], d[4];
    __builtin_memcpy(s, t->src, 16);
    __builtin_memcpy(d, t->dst, 16);
    return hash_words(seed, s, d, t->sport, t->dport, t->proto);
}

// The counters' key: one (protocol, VIP:port, endpoint:port) in a per-CPU hash map.
struct nl_key {
    u8 family;      // AF_INET (2) or AF_INET6 (10)
    u8 proto;       // 6 tcp, 17 udp, 132 sctp
    u16 vip_port;   // host order
    u16 ep_port;    // host order
    u16 pad;
    u8 vip[16];     // IPv4 in the first 4 bytes
    u8 ep[16];
};

struct nl_val {
    u64 connections;    // decisions (NEW DNAT entries)
    u64 closed;         // DESTROY DNAT events
    u64 orig_packets;
    u64 orig_bytes;
    u64 reply_packets;
    u64 reply_bytes;
    u64 duration_ns;    // sum over closed connections with timestamps
};

enum { KEY_OK, KEY_OTHER_PROTO, KEY_NOT_DNAT };

// A parsed event's counter key; KEY_NOT_DNAT when the original destination is the
// reply's source (no DNAT decision was made).
static __always_inline int dnat_key(u8 family, struct parsed *m, struct nl_key *key) {
    struct tuple *orig = &m->orig, *reply = &m->reply;
    if (orig->proto != 6 && orig->proto != 17 && orig->proto != 132)
        return KEY_OTHER_PROTO;
    u64 a[2], b[2];
    __builtin_memcpy(a, orig->dst, 16);
    __builtin_memcpy(b, reply->src, 16);
    if (a[0] == b[0] && a[1] == b[1] && orig->dport == reply->sport)
        return KEY_NOT_DNAT;
    key->family = family;
    key->proto = orig->proto;
    key->vip_port = bpf_ntohs(orig->dport);
    key->ep_port = bpf_ntohs(reply->sport);
    __builtin_memcpy(key->vip, orig->dst, 16);
    __builtin_memcpy(key->ep, reply->src, 16);
    return KEY_OK;
}

// What a DESTROY event adds to its key's counters.
static __always_inline void end_value(struct parsed *m, struct nl_val *add) {
    add->closed = 1;
    add->orig_packets = m->counters_orig[0];
    add->orig_bytes = m->counters_orig[1];
    add->reply_packets = m->counters_reply[0];
    add->reply_bytes = m->counters_reply[1];
    add->duration_ns = m->ts[0] && m->ts[1] > m->ts[0] ? m->ts[1] - m->ts[0] : 0;
}

// *add into this CPU's slot of a key: no other writer but a softirq on this CPU.
static __always_inline void add_value(struct nl_val *v, struct nl_val *add) {
    v->connections += add->connections;
    v->closed += add->closed;
    v->orig_packets += add->orig_packets;
    v->orig_bytes += add->orig_bytes;
    v->reply_packets += add->reply_packets;
    v->reply_bytes += add->reply_bytes;
    v->duration_ns += add->duration_ns;
}

// Every attribute of one event into *m; -1 if a header is malformed. A NEW event stops
// at its id (destroy == 0): what follows is state a decision does not need.
static __always_inline int walk_event(struct __sk_buff *skb, u32 msglen, int destroy,
                                      struct parsed *m) {
    u16 len = 0, atype = 0;
    u32 end = msglen;
    u32 off = NLMSG_HDRLEN + NFGEN_HDRLEN;
    for (int i = 0; i < MAX_ATTRS; i++) {
        if (off + 4 > end)
            break;
        if (attr_hdr(skb, off, &len, &atype) < 0)
            return -1;
        u32 p = off + 4, e = off + len;
        if (atype == CTA_TUPLE_ORIG) {
            parse_tuple(skb, p, e, &m->orig);
        } else if (atype == CTA_TUPLE_REPLY) {
            parse_tuple(skb, p, e, &m->reply);
        } else if (atype == CTA_ID) {
            u32 id = 0;
            bpf_skb_load_bytes(skb, p, &id, 4);
            m->ct_id = bpf_ntohl(id);
            // A NEW event needs nothing after its id: the kernel writes the two tuples,
            // CTA_ZONE, CTA_ID, then status, timeout, protocol state and the like
            // (ctnetlink_conntrack_event), which the walk would only step over.
            if (!destroy)
                break;
        } else if (atype == CTA_ZONE) {
            u16 z = 0;
            bpf_skb_load_bytes(skb, p, &z, 2);
            m->zone = bpf_ntohs(z);
        } else if (destroy && (atype == CTA_COUNTERS_ORIG || atype == CTA_COUNTERS_REPLY ||
                               atype == CTA_TIMESTAMP)) {
            u64 *dst = atype == CTA_COUNTERS_ORIG ? m->counters_orig
                       : atype == CTA_COUNTERS_REPLY ? m->counters_reply : m->ts;
            u16 l2, t2;
            for (int j = 0; j < 3; j++) {
                if (p + 4 > e || attr_hdr(skb, p, &l2, &t2) < 0)
                    break;
                if (t2 == 1 && l2 >= 12)          // PACKETS / TIMESTAMP_START
                    dst[0] = be64(skb, p + 4);
                else if (t2 == 2 && l2 >= 12)     // BYTES / TIMESTAMP_STOP
                    dst[1] = be64(skb, p + 4);
                p += (l2 + 3) & ~3;
            }
        }
        off += (len + 3) & ~3;
    }

    return 0;
}

#endif
