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
	__u32 sandbox;   /* the pod's sandbox (its network namespace's inode number), 0 unknown */
};

/* nl_host_ends: a host end's ifindex -> the sandbox on its other side. A sandbox with several
 * interfaces on the network routes its own addresses out of any of them: a source published
 * for another host end passes if both ends lead into the same sandbox (not 0). */
struct host_end {
	__u32 sandbox;
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
	/* The walls (bpf/walls.h): what a pod may not send. */
	NL_DROP_SPOOFED = 9,  /* dropped: the source is not the address of the pod it came from */
	NL_DROP_NODE = 10,    /* dropped: for the node itself (an address it holds, or nowhere) */
	NL_DROP_LINK_LOCAL = 11, /* dropped: for 169.254.0.0/16 (cloud metadata among it) */
	NL_NODE_DNS = 12,     /* passed to the node: the cluster DNS address, port 53 */
	NL_NODE_REPLY = 13,   /* passed to the node: part of an exchange the node began */
	NL_NODE_INGRESS = 14, /* passed to the node: the cluster DNS address, TCP port 80 (the
	                       * ingress's cluster-local listener) */
	NL_STAT_MAX = 15,
};

/* nl_config: the network's settings, one row (key 0), written at every attach. */
struct net_config {
	__u32 cluster_dns; /* network order, 0 for none: the node address pods may reach on port 53 */
	__u32 flags;       /* enum nl_config_flag */
};

enum nl_config_flag {
	NL_ALLOW_NODE_ACCESS = 1, /* pods may reach every address the node holds */
	NL_ALLOW_LINK_LOCAL = 2,  /* pods may reach 169.254.0.0/16 */
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
