/* Map layouts and counters shared by the eBPF programs and eni-cni (eni-cni/src/bpf.rs mirrors
 * them; a test checks the sizes against the loaded object). */
#ifndef NODELESS_DATAPATH_H
#define NODELESS_DATAPATH_H

#include <linux/types.h>

/* nl_pods: a pod's IPv4 address (network order) -> where it lives. */
struct pod_endpoint {
	__u32 ifindex;   /* the host end of the pod's veth */
	__u8 mac[6];     /* the pod's eth0 */
	__u8 pad[2];
};

/* nl_stats: per-CPU packet counters, by what happened to a packet. */
enum nl_stat {
	NL_REDIRECTED = 0,    /* pod to pod, straight into the peer */
	NL_PASSED = 1,        /* not for a local pod: up the host's stack */
	NL_NOT_IPV4 = 2,      /* passed: not IPv4 */
	NL_TTL_EXPIRED = 3,   /* passed to the stack, which answers with ICMP */
	NL_DROP_MALFORMED = 4,/* dropped: shorter than its headers */
	NL_DROP_REDIRECT = 5, /* dropped: the redirect failed */
	NL_STAT_MAX = 6,
};

#endif
