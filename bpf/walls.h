/* The walls around a pod's traffic that is not for another pod of the node: what a hostile
 * pod must not reach. Included by datapath.c, which has already checked the packet's source
 * (anti-spoofing: one lookup in nl_pods, one more in nl_host_ends for a source published for
 * another interface of the same sandbox) and found the destination is not a local pod.
 *
 * - 169.254.0.0/16 is dropped: link-local addresses stand for the cloud's metadata service
 *   (169.254.169.254), which hands out the node's credentials.
 * - A packet the node would not forward (bpf_fib_lookup says "not forwarded": an address the
 *   node holds, a broadcast, or no route at all) is for the node, and is dropped unless it is
 *   - for the cluster DNS address, port 53, UDP or TCP; or TCP port 80 there, where the
 *     ingress serves cluster-local routes (Knative's `{name}.{namespace}.svc`) to pods;
 *   - TCP matching a socket of the node's that is not a listener, or UDP matching one of its
 *     connected sockets: the node talking to the pod (probes, the ingress) and the pod's
 *     answers;
 *   - ICMP echo replies, and ICMP errors about a packet sent to this pod.
 * Either wall falls with its flag in nl_config. Everything else (other nodes' pods, the
 * outside through SNAT) goes on up the host's stack as before.
 *
 * The FIB lookup rather than a map of the node's addresses: nothing to keep in step with the
 * host (addresses come and go, `ip route add local` makes whole ranges local), and it costs
 * only packets that leave the node's pods for elsewhere, never the pod-to-pod redirect. */
#ifndef NODELESS_WALLS_H
#define NODELESS_WALLS_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "datapath.h"

#define WALL_AF_INET 2
#define WALL_IP_OFFSET 0x1fff
#define WALL_DNS_PORT 53
#define WALL_INGRESS_PORT 80

/* An ICMP header (linux/icmp.h pulls in libc's socket headers, which a BPF build lacks). */
struct wall_icmp {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 rest;
};

enum wall_icmp_type {
	WALL_ICMP_ECHOREPLY = 0,
	WALL_ICMP_DEST_UNREACH = 3,
	WALL_ICMP_TIME_EXCEEDED = 11,
	WALL_ICMP_PARAMETERPROB = 12,
};

/* 169.254.0.0/16, with the address in network order. */
static __always_inline int is_link_local(__u32 addr)
{
	return (addr & bpf_htonl(0xffff0000)) == bpf_htonl(0xa9fe0000);
}

/* Whether the host would keep the packet (or has nowhere to send it) rather than forward it. */
static __always_inline int for_the_node(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct bpf_fib_lookup fib = {};
	fib.family = WALL_AF_INET;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ifindex;
	return bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* TCP or UDP to the node: whether the node holds the other end of this exchange (a TCP socket
 * that is not a listener, a UDP socket connected to the pod). */
static __always_inline int node_began(struct __sk_buff *skb, __u8 proto, struct bpf_sock_tuple *t)
{
	struct bpf_sock *sk;
	int began = 0;
	if (proto == IPPROTO_TCP) {
		sk = bpf_sk_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			began = sk->state != BPF_TCP_LISTEN;
			bpf_sk_release(sk);
		}
	} else {
		sk = bpf_sk_lookup_udp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk) {
			began = sk->dst_port != 0;
			bpf_sk_release(sk);
		}
	}
	return began;
}

/* What happens to a packet from a pod for somewhere other than a pod of the node: an
 * enum nl_stat, NL_PASSED or one of the walls' counters (the drops among them). */
static __always_inline __u32 node_wall(struct __sk_buff *skb, struct iphdr *ip, void *end, const struct net_config *cfg)
{
	__u32 flags = cfg ? cfg->flags : 0;
	__u32 dns = cfg ? cfg->cluster_dns : 0;
	__u32 saddr = ip->saddr, daddr = ip->daddr;
	__u8 proto = ip->protocol;

	if (is_link_local(daddr))
		return (flags & NL_ALLOW_LINK_LOCAL) ? NL_PASSED : NL_DROP_LINK_LOCAL;
	if (flags & NL_ALLOW_NODE_ACCESS)
		return NL_PASSED;
	if (!for_the_node(skb, saddr, daddr))
		return NL_PASSED;

	int to_dns = dns != 0 && daddr == dns;
	/* A later fragment has no ports; the node puts it back together only with its first
	 * fragment, which was judged here. */
	if (ip->frag_off & bpf_htons(WALL_IP_OFFSET))
		return to_dns ? NL_NODE_DNS : NL_DROP_NODE;
	__u32 hlen = ip->ihl * 4;
	if (hlen < sizeof(struct iphdr))
		return NL_DROP_MALFORMED;
	void *l4 = (void *)ip + hlen;

	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		/* TCP's header starts with the same two ports. */
		struct udphdr *ports = l4;
		if ((void *)(ports + 1) > end)
			return NL_DROP_MALFORMED;
		if (to_dns && ports->dest == bpf_htons(WALL_DNS_PORT))
			return NL_NODE_DNS;
		if (to_dns && proto == IPPROTO_TCP && ports->dest == bpf_htons(WALL_INGRESS_PORT))
			return NL_NODE_INGRESS;
		struct bpf_sock_tuple t = {};
		t.ipv4.saddr = saddr;
		t.ipv4.daddr = daddr;
		t.ipv4.sport = ports->source;
		t.ipv4.dport = ports->dest;
		return node_began(skb, proto, &t) ? NL_NODE_REPLY : NL_DROP_NODE;
	}
	if (proto == IPPROTO_ICMP) {
		struct wall_icmp *icmp = l4;
		if ((void *)(icmp + 1) > end)
			return NL_DROP_MALFORMED;
		if (icmp->type == WALL_ICMP_ECHOREPLY)
			return NL_NODE_REPLY;
		if (icmp->type == WALL_ICMP_DEST_UNREACH || icmp->type == WALL_ICMP_TIME_EXCEEDED || icmp->type == WALL_ICMP_PARAMETERPROB) {
			/* Only about a packet sent to this pod: a pod cannot speak for others' paths. */
			struct iphdr *inner = (void *)(icmp + 1);
			if ((void *)(inner + 1) > end)
				return NL_DROP_MALFORMED;
			return inner->daddr == saddr ? NL_NODE_REPLY : NL_DROP_NODE;
		}
	}
	return NL_DROP_NODE;
}

#endif
