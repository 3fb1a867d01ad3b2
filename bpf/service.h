/* Map layouts and counters of the socket-level service load balancer (bpf/service.c), shared
 * with eni-cni/src/lb.rs (a test checks the sizes against the loaded object). Addresses and
 * ports are in network order throughout, as the kernel hands them to the programs. */
#ifndef NODELESS_SERVICE_H
#define NODELESS_SERVICE_H

#include <linux/types.h>

/* nl_services: one service port (ClusterIP, port, protocol) takes count + 1 rows: slot 0
 * describes it, slots 1..count are its ready endpoints. */
struct svc_key {
	__u32 addr;
	__u16 port;
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
	__u32 slot;
};

struct svc_value {
	__u32 addr;     /* slot > 0: the endpoint's address */
	__u16 port;     /* slot > 0: the endpoint's port */
	__u16 count;    /* slot 0: how many endpoints follow */
	__u32 affinity; /* slot 0: ClientIP affinity timeout in seconds; 0 for none */
};

/* nl_affinity (LRU): the endpoint a client last got for a service port. A client is a network
 * namespace: one pod, one address. */
struct affinity_key {
	__u64 client;   /* the netns cookie */
	__u32 addr;     /* the service port, as in svc_key */
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct affinity_value {
	__u64 used;     /* bpf_ktime_get_ns() of the last connection */
	__u32 addr;     /* the endpoint */
	__u16 port;
	__u16 pad;
};

/* nl_revnat (LRU): a socket's endpoint -> the service address it asked for, so that replies
 * (recvmsg) and getpeername show the ClusterIP, not the endpoint. */
struct revnat_key {
	__u64 socket;   /* the socket cookie */
	__u32 addr;     /* the endpoint */
	__u16 port;
	__u16 pad;
};

struct revnat_value {
	__u32 addr;     /* the ClusterIP */
	__u16 port;
	__u16 pad;
};

/* nl_lb_stats: per-CPU counters, by what happened to a socket call. */
enum nl_lb_stat {
	NL_LB_TRANSLATED = 0,  /* a service address replaced by an endpoint */
	NL_LB_AFFINITY = 1,    /* ... the client's previous endpoint, by ClientIP affinity */
	NL_LB_NO_ENDPOINT = 2, /* refused: the service has no ready endpoint */
	NL_LB_REVERSED = 3,    /* an endpoint shown as its service address (recvmsg, getpeername) */
	NL_LB_NO_PORT = 4,     /* refused: a ClusterIP, on a port none of its services has */
	NL_LB_STAT_MAX = 5,
};

#endif
