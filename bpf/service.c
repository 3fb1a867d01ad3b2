/* The service load balancer, at the socket: connect(2) and sendmsg(2) to a ClusterIP port are
 * given one of its ready endpoints before any packet exists, so no packet is ever rewritten
 * and no conntrack entry is made for the service address. Attached to the cgroup (v2) holding
 * the node's pods; the maps are filled from EndpointSlices by eni-cni. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "service.h"

/* From <errno.h>. */
#define ECONNREFUSED 111

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
} nl_services SEC(".maps");

/* Every ClusterIP with at least one port in nl_services (the value counts its ports), so that
 * a call to such an address on a port no service has is refused here rather than sent out
 * by the node's default route to whatever answers there. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} nl_service_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
} nl_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
} nl_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NL_LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nl_lb_stats SEC(".maps");

#define NS_PER_SEC 1000000000ULL

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&nl_lb_stats, &what);
	if (n)
		*n += 1;
}

/* Refuse the socket call with ECONNREFUSED, what kube-proxy's reject rule gives a client of a
 * service with no endpoint. */
static __always_inline int refuse(__u32 why)
{
	count(why);
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/* Give the socket call an endpoint if it is for a service. 1 lets the call go on (changed or
 * not); 0 refuses it, as a ClusterIP port with no endpoint, or one no service has, must not
 * reach whatever the ClusterIP would route to. */
static __always_inline int balance(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct svc_key key = {
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = proto,
		.slot = 0,
	};
	struct svc_value *svc = bpf_map_lookup_elem(&nl_services, &key);
	if (!svc) {
		if (bpf_map_lookup_elem(&nl_service_ips, &key.addr))
			return refuse(NL_LB_NO_PORT);
		return 1;
	}
	__u16 n = svc->count;
	__u32 timeout = svc->affinity;
	if (n == 0)
		return refuse(NL_LB_NO_ENDPOINT);

	__u32 to_addr = 0;
	__u16 to_port = 0;
	__u64 now = 0;
	struct affinity_key ak = {};
	if (timeout) {
		ak.client = bpf_get_netns_cookie(ctx);
		ak.addr = key.addr;
		ak.port = key.port;
		ak.proto = proto;
		now = bpf_ktime_get_ns();
		struct affinity_value *last = bpf_map_lookup_elem(&nl_affinity, &ak);
		if (last && now - last->used <= (__u64)timeout * NS_PER_SEC) {
			to_addr = last->addr;
			to_port = last->port;
			last->used = now;
			count(NL_LB_AFFINITY);
		}
	}
	if (!to_addr) {
		key.slot = bpf_get_prandom_u32() % n + 1;
		struct svc_value *ep = bpf_map_lookup_elem(&nl_services, &key);
		if (!ep)
			/* Only while userspace shrinks the service. */
			return refuse(NL_LB_NO_ENDPOINT);
		to_addr = ep->addr;
		to_port = ep->port;
		if (timeout) {
			struct affinity_value v = { .used = now, .addr = to_addr, .port = to_port };
			bpf_map_update_elem(&nl_affinity, &ak, &v, BPF_ANY);
		}
	}

	struct revnat_key rk = { .socket = bpf_get_socket_cookie(ctx), .addr = to_addr, .port = to_port };
	struct revnat_value rv = { .addr = key.addr, .port = key.port };
	bpf_map_update_elem(&nl_revnat, &rk, &rv, BPF_ANY);

	ctx->user_ip4 = to_addr;
	ctx->user_port = to_port;
	count(NL_LB_TRANSLATED);
	return 1;
}

/* Show an endpoint as the service address the socket asked for. */
static __always_inline int reverse(struct bpf_sock_addr *ctx)
{
	struct revnat_key rk = {
		.socket = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct revnat_value *rv = bpf_map_lookup_elem(&nl_revnat, &rk);
	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = rv->port;
		count(NL_LB_REVERSED);
	}
	return 1;
}

/* TCP sockets (MPTCP ones too, whose subflows are TCP) and UDP sockets are balanced; others (an
 * ICMP ping socket, SCTP) are left as they are, even to a ClusterIP. */
SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	__u32 proto = ctx->protocol;
	if (proto == IPPROTO_TCP || proto == IPPROTO_MPTCP)
		return balance(ctx, IPPROTO_TCP);
	if (proto == IPPROTO_UDP)
		return balance(ctx, IPPROTO_UDP);
	return 1;
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return balance(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx);
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx);
}

char LICENSE[] SEC("license") = "GPL";
