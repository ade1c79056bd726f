/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: packet sockets: a SOCK_RAW ETH_P_ALL socket bound to lo with
 *       PACKET_AUXDATA, PACKET_ORIGDEV, TPACKET_V2, PACKET_RESERVE 0x4e,
 *       PACKET_TIMESTAMP SOF_TIMESTAMPING_RAW_HARDWARE, a promiscuous
 *       membership on lo, fanout group 0x4e4b (PACKET_FANOUT_CPU with
 *       ROLLOVER) and a classic filter (ret #0x40004); a SOCK_DGRAM ETH_P_IP
 *       socket on every interface with PACKET_LOSS and O_NONBLOCK. Each comes
 *       back with its interface, protocol and options, and the first captures
 *       a UDP datagram sent on lo after the restore, with its auxdata.
 *       --ring: a third socket with a TPACKET_V3 rx ring mapped. */
#include "target.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/net_tstamp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define FANOUT (0x4e4b | ((PACKET_FANOUT_CPU | PACKET_FANOUT_FLAG_ROLLOVER) << 16))
#define PAYLOAD "netsk-packet-after-restore"

static void so(int sk, int level, int opt, int v, const char *what)
{
	if (setsockopt(sk, level, opt, &v, sizeof(v)))
		tgt_die("setsockopt %s: %m", what);
}

static int opt_is(int sk, int opt, int want)
{
	int v = -1;
	socklen_t len = sizeof(v);

	return !getsockopt(sk, SOL_PACKET, opt, &v, &len) && v == want;
}

static int bound_to(int sk, int ifindex, int proto)
{
	struct sockaddr_ll a;
	socklen_t len = sizeof(a);

	if (getsockname(sk, (struct sockaddr *)&a, &len))
		return 0;
	return a.sll_ifindex == ifindex && a.sll_protocol == htons(proto);
}

/* Send PAYLOAD on lo and find it among what `sk` captures, with auxdata. */
static int captures(int sk)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int udp = socket(AF_INET, SOCK_DGRAM, 0), i;
	char buf[2048], cbuf[512];

	if (udp < 0 || sendto(udp, PAYLOAD, sizeof(PAYLOAD), 0, (struct sockaddr *)&to,
			      sizeof(to)) < 0)
		return 0;
	close(udp);
	for (i = 0; i < 200; i++) {
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
				      .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
		struct pollfd p = { .fd = sk, .events = POLLIN };
		struct cmsghdr *c;
		ssize_t n;
		int aux = 0;

		if (poll(&p, 1, 2000) != 1)
			return 0;
		n = recvmsg(sk, &msg, 0);
		if (n <= 0)
			return 0;
		for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
			aux |= c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA;
		if (memmem(buf, n, PAYLOAD, sizeof(PAYLOAD)))
			return aux;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sock_filter code[] = { BPF_STMT(BPF_RET | BPF_K, 0x40004) };
	struct sock_fprog prog = { .len = 1, .filter = code };
	struct sockaddr_ll lo = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
	struct packet_mreq promisc = { .mr_type = PACKET_MR_PROMISC };
	struct sock_filter got[2];
	socklen_t len;
	int raw, dgram;

	tgt_init(argc, argv);
	lo.sll_ifindex = promisc.mr_ifindex = if_nametoindex("lo");
	raw = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	dgram = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK, htons(ETH_P_IP));
	if (raw < 0 || dgram < 0)
		tgt_die("socket(AF_PACKET): %m");
	if (bind(raw, (struct sockaddr *)&lo, sizeof(lo)))
		tgt_die("bind: %m");
	so(raw, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA");
	so(raw, SOL_PACKET, PACKET_ORIGDEV, 1, "PACKET_ORIGDEV");
	so(raw, SOL_PACKET, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION");
	so(raw, SOL_PACKET, PACKET_RESERVE, 0x4e, "PACKET_RESERVE");
	so(raw, SOL_PACKET, PACKET_TIMESTAMP, SOF_TIMESTAMPING_RAW_HARDWARE, "PACKET_TIMESTAMP");
	if (setsockopt(raw, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &promisc, sizeof(promisc)))
		tgt_die("PACKET_ADD_MEMBERSHIP: %m");
	so(raw, SOL_PACKET, PACKET_FANOUT, FANOUT, "PACKET_FANOUT");
	if (setsockopt(raw, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		tgt_die("SO_ATTACH_FILTER: %m");
	so(dgram, SOL_PACKET, PACKET_LOSS, 1, "PACKET_LOSS");
	if (tgt_flag("ring")) {          /* libpcap's way: refused at dump */
		struct tpacket_req3 req = { .tp_block_size = 1 << 16, .tp_block_nr = 2,
					    .tp_frame_size = 1 << 11, .tp_frame_nr = 64,
					    .tp_retire_blk_tov = 60 };
		int ring = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));

		so(ring, SOL_PACKET, PACKET_VERSION, TPACKET_V3, "PACKET_VERSION");
		if (setsockopt(ring, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) ||
		    mmap(NULL, 2 << 16, PROT_READ | PROT_WRITE, MAP_SHARED, ring, 0) == MAP_FAILED)
			tgt_die("PACKET_RX_RING: %m");
	}

	tgt_ready();
	tgt_wait_stop();

	tgt_check(bound_to(raw, lo.sll_ifindex, ETH_P_ALL), "raw: not bound to lo for ETH_P_ALL");
	tgt_check(opt_is(raw, PACKET_AUXDATA, 1), "raw: PACKET_AUXDATA lost");
	tgt_check(opt_is(raw, PACKET_ORIGDEV, 1), "raw: PACKET_ORIGDEV lost");
	tgt_check(opt_is(raw, PACKET_VERSION, TPACKET_V2), "raw: PACKET_VERSION changed");
	tgt_check(opt_is(raw, PACKET_RESERVE, 0x4e), "raw: PACKET_RESERVE changed");
	tgt_check(opt_is(raw, PACKET_TIMESTAMP, SOF_TIMESTAMPING_RAW_HARDWARE),
		  "raw: PACKET_TIMESTAMP changed");
	tgt_check(opt_is(raw, PACKET_FANOUT, FANOUT), "raw: fanout group changed");
	tgt_check(opt_is(raw, PACKET_LOSS, 0), "raw: PACKET_LOSS set");
	len = 2;
	tgt_check(getsockopt(raw, SOL_SOCKET, SO_GET_FILTER, got, &len) == 0 && len == 1 &&
		  got[0].k == 0x40004, "raw: filter changed");
	tgt_check(captures(raw), "raw: the datagram sent after restore was not captured "
		  "with auxdata");
	tgt_check(bound_to(dgram, 0, ETH_P_IP), "dgram: protocol or interface changed");
	tgt_check(opt_is(dgram, PACKET_LOSS, 1), "dgram: PACKET_LOSS lost");
	tgt_check(opt_is(dgram, PACKET_AUXDATA, 0), "dgram: PACKET_AUXDATA set");
	tgt_check(fcntl(dgram, F_GETFL) & O_NONBLOCK, "dgram: O_NONBLOCK lost");
	tgt_finish();
}
