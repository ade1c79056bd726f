/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: pipes with one end gone and pipes with a buffer size of their own:
 *       a pipe whose writer is gone (the reader gets the bytes, then EOF), a
 *       pipe whose reader is gone (the writer gets EPIPE), a pipe grown with
 *       F_SETPIPE_SZ to 1 MiB holding 200 KiB (more than a default pipe
 *       holds), and a pipe shrunk to one page with a non-blocking read end;
 *       F_GETPIPE_SZ, O_NONBLOCK and every byte, in order, come back */
#include "target.h"

#define GONE_MSG "the writer is gone, these bytes stay"
#define BIG_SIZE (1 << 20)
#define BIG_DATA (200 * 1024)
#define SMALL_SIZE 4096

static unsigned char big_byte(size_t i)
{
	return (unsigned char)(i * 7 + (i >> 9));
}

int main(int argc, char **argv)
{
	int no_writer[2], no_reader[2], big[2], small[2], sz, fl;
	static unsigned char buf[BIG_DATA + 16];
	ssize_t n, got;
	size_t i;

	tgt_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	if (pipe(no_writer) || pipe(no_reader) || pipe(big) || pipe(small))
		tgt_die("pipe: %m");
	if (write(no_writer[1], GONE_MSG, strlen(GONE_MSG)) != (ssize_t)strlen(GONE_MSG))
		tgt_die("write: %m");
	close(no_writer[1]);
	close(no_reader[0]);

	if (fcntl(big[1], F_SETPIPE_SZ, BIG_SIZE) < 0)
		tgt_die("F_SETPIPE_SZ %d: %m", BIG_SIZE);
	for (i = 0; i < BIG_DATA; i++)
		buf[i] = big_byte(i);
	if (write(big[1], buf, BIG_DATA) != BIG_DATA)
		tgt_die("write big: %m");
	if (fcntl(small[0], F_SETPIPE_SZ, SMALL_SIZE) < 0 ||
	    fcntl(small[0], F_SETFL, O_NONBLOCK) || write(small[1], "s", 1) != 1)
		tgt_die("small pipe: %m");

	tgt_info("no_writer=%d", no_writer[0]);
	tgt_info("no_reader=%d", no_reader[1]);
	tgt_ready();
	tgt_wait_stop();

	/* Writer gone: the bytes, then EOF (not EAGAIN, not a hang). */
	n = read(no_writer[0], buf, sizeof(buf));
	tgt_check(n == (ssize_t)strlen(GONE_MSG) && !memcmp(buf, GONE_MSG, n),
		  "writer-gone pipe: read %zd bytes, want \"%s\"", n, GONE_MSG);
	n = read(no_writer[0], buf, sizeof(buf));
	tgt_check(n == 0, "writer-gone pipe: read after the bytes gave %zd, want EOF", n);

	/* Reader gone: EPIPE (SIGPIPE is ignored). */
	n = write(no_reader[1], "x", 1);
	tgt_check(n < 0 && errno == EPIPE, "reader-gone pipe: write gave %zd (%m), "
		  "want EPIPE", n);

	/* Grown pipe: its size and its 200 KiB. */
	sz = fcntl(big[0], F_GETPIPE_SZ);
	tgt_check(sz == BIG_SIZE, "big pipe: F_GETPIPE_SZ %d, want %d", sz, BIG_SIZE);
	fcntl(big[0], F_SETFL, O_NONBLOCK);
	for (got = 0; got < BIG_DATA; got += n) {
		n = read(big[0], buf + got, BIG_DATA - got);
		if (n <= 0)
			break;
	}
	tgt_check(got == BIG_DATA, "big pipe: %zd bytes, want %d", got, BIG_DATA);
	for (i = 0; i < (size_t)got; i++)
		if (!tgt_check(buf[i] == big_byte(i), "big pipe: byte %zu is %#x, want %#x",
			       i, buf[i], big_byte(i)))
			break;
	tgt_check(read(big[0], buf, 1) < 0 && errno == EAGAIN,
		  "big pipe: more bytes than were written");

	/* Shrunk pipe: its size, its flags, its byte. */
	sz = fcntl(small[1], F_GETPIPE_SZ);
	tgt_check(sz == SMALL_SIZE, "small pipe: F_GETPIPE_SZ %d, want %d", sz, SMALL_SIZE);
	fl = fcntl(small[0], F_GETFL);
	tgt_check(fl & O_NONBLOCK, "small pipe: read end lost O_NONBLOCK (%#x)", fl);
	fl = fcntl(small[1], F_GETFL);
	tgt_check(!(fl & O_NONBLOCK), "small pipe: write end gained O_NONBLOCK (%#x)", fl);
	tgt_check(read(small[0], buf, 2) == 1 && buf[0] == 's', "small pipe: byte lost");
	tgt_finish();
}
