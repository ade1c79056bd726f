/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: raw and ICMP "ping" sockets: a raw ICMP socket bound to 127.0.0.1
 *       with ICMP_FILTER 0x4e4cfffe (only echo replies pass), IP_RECVERR,
 *       SO_TIMESTAMP, IP_TTL 0x4e and a classic filter (ret #0x4e4c); a raw
 *       ICMPv6 socket with an ICMPV6_FILTER passing only echo replies; an
 *       IPPROTO_RAW socket (IP_HDRINCL) connected to 127.0.0.2; an ICMP ping
 *       socket bound with ident 0x4e4c and connected to 127.0.0.1 (needs
 *       net.ipv4.ping_group_range to hold our gid: --ping) and an ICMPv6
 *       ping socket with ident 0x4e4d. After restore: each option reads
 *       back, the raw socket gets the reply to an echo it sends, and the
 *       ping socket gets the reply to its own echo, with its ident. */
#include "target.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/icmp.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <sys/socket.h>

#define ICMP_MASK 0x4e4cfffeu       /* bit 0 clear: ICMP_ECHOREPLY passes */

static int sock_or_die(int family, int type, int proto)
{
	int sk = socket(family, type, proto);

	if (sk < 0)
		tgt_die("socket(%d, %d, %d): %m", family, type, proto);
	return sk;
}

static int intopt(int sk, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);

	return getsockopt(sk, level, opt, &v, &len) ? -1 : v;
}

static void set_int(int sk, int level, int opt, int v, const char *what)
{
	if (setsockopt(sk, level, opt, &v, sizeof(v)))
		tgt_die("setsockopt %s: %m", what);
}

static unsigned short csum(const void *data, int len)
{
	const unsigned short *p = data;
	unsigned sum = 0;

	for (; len > 1; len -= 2)
		sum += *p++;
	sum = (sum >> 16) + (sum & 0xffff);
	return ~(sum + (sum >> 16));
}

/* An echo request with id/seq to 127.0.0.1; wait for its reply on `sk`
 * (a raw socket sees the IP header first, a ping socket does not). */
static int echo(int send_sk, int recv_sk, unsigned short id, unsigned short seq, int ip_hdr)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct icmphdr h = { .type = ICMP_ECHO, .un.echo = { htons(id), htons(seq) } };
	char buf[512];
	int i;

	h.checksum = csum(&h, sizeof(h));
	if (sendto(send_sk, &h, sizeof(h), 0, (struct sockaddr *)&to, sizeof(to)) < 0)
		return 0;
	for (i = 0; i < 20; i++) {
		struct pollfd p = { .fd = recv_sk, .events = POLLIN };
		struct icmphdr *r;
		ssize_t n;

		if (poll(&p, 1, 2000) != 1)
			return 0;
		n = recv(recv_sk, buf, sizeof(buf), 0);
		if (n <= 0)
			return 0;
		r = (struct icmphdr *)(buf + (ip_hdr ? ((struct iphdr *)buf)->ihl * 4 : 0));
		if (r->type == ICMP_ECHOREPLY && ntohs(r->un.echo.sequence) == seq)
			return ntohs(r->un.echo.id) == id;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, 0x4e4c) };
	struct sock_fprog prog = { .len = 1, .filter = code };
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in lo2 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000002) };
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct icmp6_filter f6, got6;
	unsigned mask = ICMP_MASK, got_mask = 0;
	socklen_t len;
	int raw, raw6, rawip, ping = -1, ping6 = -1, with_ping;
	struct sockaddr_in name;

	tgt_init(argc, argv);
	with_ping = tgt_flag("ping");
	raw = sock_or_die(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	if (bind(raw, (struct sockaddr *)&lo, sizeof(lo)))
		tgt_die("bind raw: %m");
	if (setsockopt(raw, SOL_RAW, ICMP_FILTER, &mask, sizeof(mask)))
		tgt_die("ICMP_FILTER: %m");
	set_int(raw, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR");
	set_int(raw, SOL_SOCKET, SO_TIMESTAMP, 1, "SO_TIMESTAMP");
	set_int(raw, IPPROTO_IP, IP_TTL, 0x4e, "IP_TTL");
	if (setsockopt(raw, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		tgt_die("SO_ATTACH_FILTER: %m");
	raw6 = sock_or_die(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
	ICMP6_FILTER_SETBLOCKALL(&f6);
	ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f6);
	if (setsockopt(raw6, IPPROTO_ICMPV6, ICMP6_FILTER, &f6, sizeof(f6)))
		tgt_die("ICMP6_FILTER: %m");
	rawip = sock_or_die(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (connect(rawip, (struct sockaddr *)&lo2, sizeof(lo2)))
		tgt_die("connect raw: %m");
	if (with_ping) {
		struct sockaddr_in id = lo;
		struct sockaddr_in6 id6 = lo6;

		ping = sock_or_die(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
		id.sin_port = htons(0x4e4c);       /* a ping socket's port is its ident */
		if (bind(ping, (struct sockaddr *)&id, sizeof(id)) ||
		    connect(ping, (struct sockaddr *)&lo, sizeof(lo)))
			tgt_die("ping socket: %m");
		ping6 = sock_or_die(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6);
		id6.sin6_port = htons(0x4e4d);
		if (bind(ping6, (struct sockaddr *)&id6, sizeof(id6)))
			tgt_die("ping6 socket: %m");
	}

	tgt_ready();
	tgt_wait_stop();

	len = sizeof(got_mask);
	tgt_check(!getsockopt(raw, SOL_RAW, ICMP_FILTER, &got_mask, &len) && got_mask == ICMP_MASK,
		  "raw: ICMP_FILTER is %#x, want %#x", got_mask, ICMP_MASK);
	tgt_check(intopt(raw, IPPROTO_IP, IP_RECVERR) == 1, "raw: IP_RECVERR lost");
	tgt_check(intopt(raw, SOL_SOCKET, SO_TIMESTAMP) == 1, "raw: SO_TIMESTAMP lost");
	tgt_check(intopt(raw, IPPROTO_IP, IP_TTL) == 0x4e, "raw: IP_TTL changed");
	len = 0;
	tgt_check(!getsockopt(raw, SOL_SOCKET, SO_GET_FILTER, NULL, &len) && len == 1,
		  "raw: filter has %u instructions, want 1", len);
	len = sizeof(name);
	tgt_check(!getsockname(raw, (struct sockaddr *)&name, &len) &&
		  name.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "raw: not bound to 127.0.0.1");
	tgt_check(echo(raw, raw, 0x4e4e, 7, 1), "raw: no echo reply after restore");
	len = sizeof(got6);
	tgt_check(!getsockopt(raw6, IPPROTO_ICMPV6, ICMP6_FILTER, &got6, &len) &&
		  !memcmp(&got6, &f6, sizeof(f6)), "raw6: ICMPV6_FILTER changed");
	tgt_check(intopt(rawip, IPPROTO_IP, IP_HDRINCL) == 1, "rawip: IP_HDRINCL lost");
	{	/* getpeername fails on a raw socket (no port): send() must find its peer */
		struct iphdr ip = { .version = 4, .ihl = 5, .tot_len = htons(sizeof(ip)),
				    .ttl = 1, .protocol = 253, .daddr = htonl(0x7f000002) };

		tgt_check(send(rawip, &ip, sizeof(ip), 0) == sizeof(ip),
			  "rawip: send to its peer: %m");
	}
	if (with_ping) {
		struct sockaddr_in6 name6;

		len = sizeof(name);
		tgt_check(!getsockname(ping, (struct sockaddr *)&name, &len) &&
			  name.sin_port == htons(0x4e4c), "ping: ident changed");
		tgt_check(echo(ping, ping, 0x4e4c, 9, 0), "ping: no echo reply with its ident");
		len = sizeof(name6);
		tgt_check(!getsockname(ping6, (struct sockaddr *)&name6, &len) &&
			  name6.sin6_port == htons(0x4e4d), "ping6: ident changed");
	}
	tgt_finish();
}
