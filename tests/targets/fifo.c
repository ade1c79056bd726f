/* engine-target: variants=dynamic-pie,static-nopie ; flags=-O2 ;
 * what: a named FIFO opened by a reader and a writer with unread bytes in
 *       it; after restore the bytes are there, in order, and the pair works */
#include <sys/stat.h>
#include "target.h"

int main(int argc, char **argv)
{
	char path[PATH_MAX + 16], buf[64];
	int r, w, n;

	tgt_init(argc, argv);
	snprintf(path, sizeof(path), "%s.fifo", tgt_result_path);
	unlink(path);
	if (mkfifo(path, 0600))
		tgt_die("mkfifo: %m");
	r = open(path, O_RDONLY | O_NONBLOCK);
	w = open(path, O_WRONLY);
	if (r < 0 || w < 0 || write(w, "queued in a fifo", 16) != 16)
		tgt_die("fifo: %m");
	tgt_ready();

	while (!tgt_stop)
		tgt_msleep(5);
	n = read(r, buf, sizeof(buf));
	tgt_check(n == 16 && !memcmp(buf, "queued in a fifo", 16), "read %d bytes back", n);
	tgt_check(write(w, "more", 4) == 4 && read(r, buf, sizeof(buf)) == 4 &&
		  !memcmp(buf, "more", 4), "the pair does not work after restore");
	tgt_check(fcntl(r, F_GETFL) & O_NONBLOCK, "reader lost O_NONBLOCK");
	tgt_finish();
}
