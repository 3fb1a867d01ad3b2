/* The pod fast path (tc ingress on each pod's host-side veth end): a packet from a pod to
 * another pod on this node skips the host's routing and goes straight into the other pod's
 * namespace with bpf_redirect_peer; anything else continues up the host's stack, through the
 * walls of walls.h (not to the node, not to link-local addresses). A packet whose source is
 * not an address published for the sandbox behind the host end it came through is dropped
 * first: a pod speaks only for itself (with any of its addresses, when it has several
 * interfaces on the network).
 *
 * Socket-level acceleration (sockops + sk_msg, as in Cilium's sockmap mode): a TCP connection
 * whose two ends are pods of this network has both sockets entered in nl_sockets at the
 * handshake, and what one end sends is put straight into the other's receive queue, with no
 * TCP segment, veth or softirq in between. */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "datapath.h"
#include "walls.h"

#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct pod_endpoint);
} nl_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct host_end);
} nl_host_ends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nl_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct net_config);
} nl_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u32);
} nl_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} nl_sock_state SEC(".maps");

/* The MAC of every host end: the pods' gateway. */
static const __u8 gateway_mac[ETH_ALEN] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&nl_stats, &what);
	if (n)
		*n += 1;
	return verdict;
}

/* Whether the host end at `ifindex` leads into the sandbox `from` was published for: the
 * source is another address of the same pod (one lookup, only when the source is published
 * for another host end). */
static __always_inline int same_sandbox(const struct pod_endpoint *from, __u32 ifindex)
{
	struct host_end *here = bpf_map_lookup_elem(&nl_host_ends, &ifindex);
	return here && here->sandbox != 0 && here->sandbox == from->sandbox;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(eth + 1) > end)
		return count(NL_DROP_MALFORMED, TC_ACT_SHOT);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(NL_NOT_IPV4, TC_ACT_OK);
	if ((void *)(ip + 1) > end)
		return count(NL_DROP_MALFORMED, TC_ACT_SHOT);

	/* Anti-spoofing: the source is published for this very host end, or for another
	 * interface of the same sandbox (whose routes may send any of its addresses out here). */
	__u32 saddr = ip->saddr;
	struct pod_endpoint *from = bpf_map_lookup_elem(&nl_pods, &saddr);
	if (!from)
		return count(NL_DROP_SPOOFED, TC_ACT_SHOT);
	if (from->ifindex != skb->ifindex && !same_sandbox(from, skb->ifindex))
		return count(NL_DROP_SPOOFED, TC_ACT_SHOT);

	__u32 daddr = ip->daddr;
	struct pod_endpoint *to = bpf_map_lookup_elem(&nl_pods, &daddr);
	if (!to) {
		__u32 zero = 0;
		__u32 what = node_wall(skb, ip, end, bpf_map_lookup_elem(&nl_config, &zero));
		return count(what, what == NL_PASSED || what == NL_NODE_DNS || what == NL_NODE_REPLY || what == NL_NODE_INGRESS ? TC_ACT_OK : TC_ACT_SHOT);
	}
	if (ip->ttl <= 1)
		return count(NL_TTL_EXPIRED, TC_ACT_OK);

	/* A router's hop: TTL down by one, the header checksum updated to match. */
	__u16 old_word = *(__u16 *)&ip->ttl;
	ip->ttl -= 1;
	__u16 new_word = *(__u16 *)&ip->ttl;
	bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), old_word, new_word, sizeof(__u16));

	/* From the gateway, to the pod. */
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), to->mac, ETH_ALEN, 0);
	bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), gateway_mac, ETH_ALEN, 0);

	long verdict = bpf_redirect_peer(to->ifindex, 0);
	if (verdict != TC_ACT_REDIRECT)
		return count(NL_DROP_REDIRECT, TC_ACT_SHOT);
	return count(NL_REDIRECTED, TC_ACT_REDIRECT);
}

static __always_inline int is_pod(__u32 addr)
{
	return bpf_map_lookup_elem(&nl_pods, &addr) != NULL;
}

/* A socket's IPv4 addresses into `local` and `remote`, from a sockops or sk_msg context: an
 * AF_INET socket's, or an AF_INET6 socket's IPv4-mapped ones (::ffff:a.b.c.d, what a
 * dual-stack listener accepts IPv4 connections as). False if it has none. Each field is read
 * straight from the context in its own branch (the empty asm keeps clang from merging the
 * branches into one load through a computed context pointer, which the verifier refuses). */
#define IPV4_ENDS(ctx, local, remote) ({                                                       \
	int ok_ = 0;                                                                             \
	if ((ctx)->family == AF_INET) {                                                          \
		local = (ctx)->local_ip4;                                                        \
		remote = (ctx)->remote_ip4;                                                      \
		asm volatile("" : "+r"(local), "+r"(remote));                                    \
		ok_ = 1;                                                                         \
	} else if ((ctx)->family == AF_INET6) {                                                  \
		__u32 mapped_ = bpf_htonl(0xffff);                                               \
		__u32 l0_ = (ctx)->local_ip6[0], l1_ = (ctx)->local_ip6[1], l2_ = (ctx)->local_ip6[2]; \
		__u32 r0_ = (ctx)->remote_ip6[0], r1_ = (ctx)->remote_ip6[1], r2_ = (ctx)->remote_ip6[2]; \
		if (!(l0_ | l1_ | r0_ | r1_) && l2_ == mapped_ && r2_ == mapped_) {               \
			local = (ctx)->local_ip6[3];                                             \
			remote = (ctx)->remote_ip6[3];                                           \
			asm volatile("" : "+r"(local), "+r"(remote));                            \
			ok_ = 1;                                                                 \
		}                                                                                \
	}                                                                                        \
	ok_;                                                                                     \
})

/* At the end of a TCP handshake, enter the socket if both ends are pods of this network. A
 * socket that has already carried data (TCP Fast Open) is left to the stack: bytes sent the
 * other way could be overtaken. */
SEC("sockops")
int pod_sockets(struct bpf_sock_ops *ops)
{
	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	__u32 local = 0, remote = 0;
	if (!IPV4_ENDS(ops, local, remote))
		return 1;
	if (!is_pod(local) || !is_pod(remote))
		return 1;
	if (ops->data_segs_in != 0 || ops->data_segs_out != 0)
		return 1;
	struct bpf_sock *sk = ops->sk;
	if (!sk)
		return 1;
	__u32 *state = bpf_sk_storage_get(&nl_sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state)
		return 1;
	*state = NL_SOCK_UNDECIDED;
	struct sock_key key = {
		.local_ip = local,
		.remote_ip = remote,
		.local_port = ops->local_port,
		.remote_port = bpf_ntohl(ops->remote_port),
	};
	if (bpf_sock_hash_update(ops, &nl_sockets, &key, BPF_ANY) == 0)
		count(NL_SOCK_PAIRED, 0);
	return 1;
}

/* Every message an entered socket sends: into the peer socket when the peer is entered too
 * (and this socket has sent nothing through the stack), else through the stack. */
SEC("sk_msg")
int pod_messages(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	__u32 *state = bpf_sk_storage_get(&nl_sock_state, sk, 0, 0);
	if (!state || *state == NL_SOCK_STACK)
		return count(NL_MSG_STACK, SK_PASS);
	__u32 local = 0, remote = 0;
	if (!IPV4_ENDS(msg, local, remote))
		return count(NL_MSG_STACK, SK_PASS);
	struct sock_key peer = {
		.local_ip = remote,
		.remote_ip = local,
		.local_port = bpf_ntohl(msg->remote_port),
		.remote_port = msg->local_port,
	};
	if (bpf_msg_redirect_hash(msg, &nl_sockets, &peer, BPF_F_INGRESS) == SK_PASS) {
		*state = NL_SOCK_SHORTCUT;
		return count(NL_MSG_SHORTCUT, SK_PASS);
	}
	/* Not there: either it never was (this socket keeps to the stack from now on) or it has
	 * closed since (TCP answers with a reset). */
	if (*state == NL_SOCK_UNDECIDED)
		*state = NL_SOCK_STACK;
	return count(NL_MSG_STACK, SK_PASS);
}

char LICENSE[] SEC("license") = "GPL";
