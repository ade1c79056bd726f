/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: netlink sockets: a route socket bound to port id 0x4e4c01 with
 *       RTMGRP_LINK|RTMGRP_IPV4_ROUTE, NETLINK_EXT_ACK on, a receive buffer
 *       of 0x13579 and O_NONBLOCK; a second route socket on port id 0x4e4c02
 *       listening to group 33 (past the 32 of bind's mask, by
 *       NETLINK_ADD_MEMBERSHIP) and connected to the first; a generic
 *       netlink socket never bound, with a one-instruction classic filter
 *       (ret #0x4e4c); an audit socket autobound. Each comes back with its
 *       port id, groups, peer (a message sent by the second reaches the
 *       first), flags and options, and the route socket still answers.
 *       --unread: an answer is left unread in the route socket's queue.
 *       --netns: all made in a network namespace of its own (sock_diag is
 *       asked there); --netns-after: moved to one once they are made. */
#include "target.h"

#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sched.h>
#include <sys/socket.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#define PORT_A 0x4e4c01
#define PORT_B 0x4e4c02
#define GROUPS_A (RTMGRP_LINK | RTMGRP_IPV4_ROUTE)
#define RCVBUF 0x13579

static int nl_socket(int proto, int type_flags)
{
	int sk = socket(AF_NETLINK, SOCK_RAW | type_flags, proto);

	if (sk < 0)
		tgt_die("socket(AF_NETLINK, %d): %m", proto);
	return sk;
}

static void nl_bind(int sk, unsigned pid, unsigned groups)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = pid, .nl_groups = groups };

	if (bind(sk, (struct sockaddr *)&a, sizeof(a)))
		tgt_die("bind netlink %#x: %m", pid);
}

static int getopt_int(int sk, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (getsockopt(sk, level, opt, &v, &len))
		return -1;
	return v;
}

static int name_is(int sk, unsigned pid, unsigned groups)
{
	struct sockaddr_nl a;
	socklen_t len = sizeof(a);

	if (getsockname(sk, (struct sockaddr *)&a, &len))
		return 0;
	return a.nl_pid == pid && a.nl_groups == groups;
}

static int has_group(int sk, unsigned group)
{
	unsigned words[4] = { 0 };
	socklen_t len = sizeof(words);

	if (getsockopt(sk, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words, &len))
		return 0;
	return (words[(group - 1) / 32] >> ((group - 1) % 32)) & 1;
}

/* An RTM_GETLINK request for lo: the route socket answers with RTM_NEWLINK. */
static int route_answers(int sk)
{
	struct { struct nlmsghdr h; struct ifinfomsg i; } req = {
		.h = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
		       .nlmsg_flags = NLM_F_REQUEST, .nlmsg_seq = 0x4e4c },
		.i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 },
	};
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	char buf[8192];
	struct pollfd p = { .fd = sk, .events = POLLIN };
	int i;

	if (sendto(sk, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return 0;
	for (i = 0; i < 20; i++) {   /* link notifications may come first */
		struct nlmsghdr *h = (struct nlmsghdr *)buf;

		if (poll(&p, 1, 2000) != 1 || recv(sk, buf, sizeof(buf), 0) <= 0)
			return 0;
		if (h->nlmsg_seq == 0x4e4c)
			return h->nlmsg_type == RTM_NEWLINK;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, 0x4e4c) };
	struct sock_fprog prog = { .len = 1, .filter = code };
	struct sock_filter got[4];
	socklen_t len;
	int a, b, gen, audit, one = 1, rcvbuf = RCVBUF, group = 33;
	struct sockaddr_nl peer = { .nl_family = AF_NETLINK, .nl_pid = PORT_A };
	struct sockaddr_nl audit_name;
	unsigned audit_port;
	char msg[64];

	tgt_init(argc, argv);
	if (tgt_flag("netns") && unshare(CLONE_NEWNET))
		tgt_die("unshare(CLONE_NEWNET): %m");
	a = nl_socket(NETLINK_ROUTE, SOCK_NONBLOCK);
	if (setsockopt(a, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) ||
	    setsockopt(a, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one)))
		tgt_die("setsockopt: %m");
	nl_bind(a, PORT_A, GROUPS_A);
	b = nl_socket(NETLINK_ROUTE, 0);
	nl_bind(b, PORT_B, 0);
	if (setsockopt(b, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof(group)))
		tgt_die("NETLINK_ADD_MEMBERSHIP: %m");
	if (connect(b, (struct sockaddr *)&peer, sizeof(peer)))
		tgt_die("connect: %m");
	gen = nl_socket(NETLINK_GENERIC, 0);
	if (setsockopt(gen, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		tgt_die("SO_ATTACH_FILTER: %m");
	audit = nl_socket(NETLINK_AUDIT, 0);
	nl_bind(audit, 0, 0);                 /* the kernel picks the port id */
	len = sizeof(audit_name);
	if (getsockname(audit, (struct sockaddr *)&audit_name, &len))
		tgt_die("getsockname: %m");
	audit_port = audit_name.nl_pid;
	if (tgt_flag("unread")) {  /* an answer left in a's queue: refused at dump */
		struct { struct nlmsghdr h; struct ifinfomsg i; } req = {
			.h = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
			       .nlmsg_flags = NLM_F_REQUEST, .nlmsg_seq = 1 },
			.i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 },
		};
		struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };

		if (sendto(a, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
			tgt_die("sendto: %m");
	}

	if (tgt_flag("netns-after") && unshare(CLONE_NEWNET))
		tgt_die("unshare(CLONE_NEWNET): %m");

	tgt_ready();
	tgt_wait_stop();

	tgt_check(name_is(a, PORT_A, GROUPS_A), "route socket: port id or groups changed");
	tgt_check(getopt_int(a, SOL_NETLINK, NETLINK_EXT_ACK) == 1, "route socket: EXT_ACK lost");
	tgt_check(getopt_int(a, SOL_SOCKET, SO_RCVBUF) == 2 * RCVBUF,
		  "route socket: SO_RCVBUF is %d, want %d", getopt_int(a, SOL_SOCKET, SO_RCVBUF),
		  2 * RCVBUF);
	tgt_check(fcntl(a, F_GETFL) & O_NONBLOCK, "route socket: O_NONBLOCK lost");
	tgt_check(route_answers(a), "route socket: no answer to RTM_GETLINK");
	tgt_check(name_is(b, PORT_B, 0), "second socket: port id changed");
	tgt_check(has_group(b, 33), "second socket: group 33 lost");
	tgt_check(!has_group(b, 1), "second socket: listens to group 1");
	tgt_check(!(fcntl(b, F_GETFL) & O_NONBLOCK), "second socket: O_NONBLOCK set");
	tgt_check(getopt_int(b, SOL_NETLINK, NETLINK_EXT_ACK) == 0, "second socket: EXT_ACK set");
	memset(msg, 0, sizeof(msg));
	((struct nlmsghdr *)msg)->nlmsg_len = sizeof(msg);
	((struct nlmsghdr *)msg)->nlmsg_type = NLMSG_NOOP;
	((struct nlmsghdr *)msg)->nlmsg_seq = 0x4e4c02;
	tgt_check(send(b, msg, sizeof(msg), 0) == sizeof(msg), "second socket: send to its peer: %m");
	{
		struct pollfd p = { .fd = a, .events = POLLIN };
		struct sockaddr_nl from;
		socklen_t flen = sizeof(from);
		char in[8192];
		int i, seen = 0;

		for (i = 0; i < 20 && !seen && poll(&p, 1, 2000) == 1; i++) {
			if (recvfrom(a, in, sizeof(in), 0, (struct sockaddr *)&from, &flen) <= 0)
				break;
			seen = from.nl_pid == PORT_B &&
			       ((struct nlmsghdr *)in)->nlmsg_seq == 0x4e4c02;
		}
		tgt_check(seen, "second socket's message did not reach its peer");
	}
	len = 0;
	tgt_check(getsockopt(gen, SOL_SOCKET, SO_GET_FILTER, NULL, &len) == 0 && len == 1,
		  "generic socket: filter has %u instructions, want 1", len);
	len = 4;
	tgt_check(getsockopt(gen, SOL_SOCKET, SO_GET_FILTER, got, &len) == 0 &&
		  got[0].k == 0x4e4c && got[0].code == (BPF_RET | BPF_K),
		  "generic socket: filter changed");
	tgt_check(getopt_int(gen, SOL_SOCKET, SO_PROTOCOL) == NETLINK_GENERIC,
		  "generic socket: protocol changed");
	tgt_check(getopt_int(audit, SOL_SOCKET, SO_PROTOCOL) == NETLINK_AUDIT,
		  "audit socket: protocol changed");
	tgt_check(name_is(audit, audit_port, 0), "audit socket: port id changed");
	tgt_finish();
}
