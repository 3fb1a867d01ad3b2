/* The pod fast path (tc ingress on each pod's host-side veth end): a packet from a pod to
 * another pod on this node skips the host's routing and goes straight into the other pod's
 * namespace with bpf_redirect_peer; anything else continues up the host's stack. */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "datapath.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct pod_endpoint);
} nl_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nl_stats SEC(".maps");

/* The MAC of every host end: the pods' gateway. */
static const __u8 gateway_mac[ETH_ALEN] = {0xee, 0xee, 0xee, 0xee, 0xee, 0xee};

static __always_inline int count(__u32 what, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&nl_stats, &what);
	if (n)
		*n += 1;
	return verdict;
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

	__u32 daddr = ip->daddr;
	struct pod_endpoint *to = bpf_map_lookup_elem(&nl_pods, &daddr);
	if (!to)
		return count(NL_PASSED, TC_ACT_OK);
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

char LICENSE[] SEC("license") = "GPL";
