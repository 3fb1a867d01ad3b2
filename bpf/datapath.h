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
	/* Socket-level acceleration (TCP between two pods of the network): */
	NL_SOCK_PAIRED = 6,   /* sockets entered in nl_sockets at the handshake */
	NL_MSG_SHORTCUT = 7,  /* messages put straight into the peer socket */
	NL_MSG_STACK = 8,     /* messages sent through the stack: the peer was not there yet */
	NL_STAT_MAX = 9,
};

/* nl_sockets: a TCP socket between two pods, by its own view of the connection (ports in
 * host order), so the peer's key is this one with the ends swapped. */
struct sock_key {
	__u32 local_ip;
	__u32 remote_ip;
	__u32 local_port;
	__u32 remote_port;
};

/* nl_sock_state: per socket (socket-local storage), how its messages travel. A socket's
 * bytes take one way for its whole life, so they cannot overtake each other. */
enum nl_sock_state {
	NL_SOCK_UNDECIDED = 0, /* entered at the handshake; its first message decides */
	NL_SOCK_SHORTCUT = 1,  /* straight into the peer socket */
	NL_SOCK_STACK = 2,     /* through TCP, as without acceleration */
};

#endif
