/* An older eni-cni's datapath, for the upgrade test (upgrade.rs) only: the maps as eni-cni
 * pinned them before sandboxes — struct pod_endpoint of 12 bytes (no sandbox), 14 counters,
 * the settings row, no nl_host_ends — and a from_pod that holds that version's anti-spoofing
 * check and passes everything else. build.rs builds it beside the real objects; nothing embeds
 * it but the test. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct pod_endpoint_v1 {
	__u32 ifindex;
	__u8 mac[6];
	__u8 pad[2];
};

struct net_config_v1 {
	__u32 cluster_dns;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct pod_endpoint_v1);
} nl_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 14);
	__type(key, __u32);
	__type(value, __u64);
} nl_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct net_config_v1);
} nl_config SEC(".maps");

#define V1_DROP_SPOOFED 9

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || (void *)(ip + 1) > end)
		return TC_ACT_OK;
	__u32 saddr = ip->saddr;
	struct pod_endpoint_v1 *from = bpf_map_lookup_elem(&nl_pods, &saddr);
	if (!from || from->ifindex != skb->ifindex) {
		__u32 what = V1_DROP_SPOOFED;
		__u64 *n = bpf_map_lookup_elem(&nl_stats, &what);
		if (n)
			*n += 1;
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
