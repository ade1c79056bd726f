/* The demo process: appends an increasing counter to a file ten times a second. */
#include <stdio.h>
#include <time.h>

int main(int argc, char **argv)
{
	FILE *f = fopen(argc > 1 ? argv[1] : "count.log", "a");
	if (!f)
		return 1;
	for (unsigned long n = 0;; n++) {
		fprintf(f, "%lu\n", n);
		fflush(f);
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}
