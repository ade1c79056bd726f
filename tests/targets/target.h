/*
 * target.h - the DESIGN §6 protocol shared by every target in tests/targets
 * (the counterpart of zdtm's zdtmtst.h; header-only so each target is one
 * compiler invocation).
 *
 *   prog --ready FILE --result FILE [--close-stdio] [target args]
 *
 * tgt_init()   parses the protocol args and installs the SIGTERM handler,
 *              which only sets tgt_stop.
 * tgt_info()   adds a "key=value" line to the ready file (addresses, fd
 *              numbers), so tests can poke at the target from outside.
 * tgt_ready()  writes "ready\n" + info lines; with --close-stdio then closes
 *              fds 0-2, so a target can be dumped before any fd plugin works.
 * tgt_check()  records the first failed check; tgt_finish() writes
 *              "PASS\n" or "FAIL: why\n" and exits.
 *
 * Both files are written to FILE.tmp and renamed, so the harness never reads
 * a half-written file.  No fd to them is held across a dump.
 */
#ifndef ENGINE_TARGET_H
#define ENGINE_TARGET_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TGT_UNUSED __attribute__((unused))

static volatile sig_atomic_t tgt_stop;
static char tgt_ready_path[PATH_MAX], tgt_result_path[PATH_MAX];
static int tgt_close_stdio;
static int tgt_argc;           /* target args, argv[0] included */
static char **tgt_argv;
static char tgt_infobuf[4096];
static char tgt_failmsg[1024];

static TGT_UNUSED void tgt_on_term(int sig)
{
	(void)sig;
	tgt_stop = 1;
}

/* Setup error, before "ready": the harness shows our stderr. */
__attribute__((format(printf, 1, 2), noreturn))
static TGT_UNUSED void tgt_die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "%s: ", tgt_argv ? tgt_argv[0] : "target");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static TGT_UNUSED void tgt_abspath(char *dst, const char *src)
{
	char cwd[PATH_MAX];

	/* Targets may chdir (files.c): keep the protocol paths absolute. */
	if (src[0] == '/' || !getcwd(cwd, sizeof(cwd)))
		snprintf(dst, PATH_MAX, "%s", src);
	else if (snprintf(dst, PATH_MAX, "%s/%.*s", cwd, PATH_MAX / 2, src)
		 >= PATH_MAX)
		tgt_die("path too long: %s", src);
}

static TGT_UNUSED void tgt_init(int argc, char **argv)
{
	struct sigaction sa;
	int i;

	tgt_argv = malloc(sizeof(char *) * (argc + 1));
	tgt_argv[tgt_argc++] = argv[0];
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--ready") && i + 1 < argc)
			tgt_abspath(tgt_ready_path, argv[++i]);
		else if (!strcmp(argv[i], "--result") && i + 1 < argc)
			tgt_abspath(tgt_result_path, argv[++i]);
		else if (!strcmp(argv[i], "--close-stdio"))
			tgt_close_stdio = 1;
		else
			tgt_argv[tgt_argc++] = argv[i];
	}
	tgt_argv[tgt_argc] = NULL;
	if (!tgt_ready_path[0] || !tgt_result_path[0])
		tgt_die("usage: --ready FILE --result FILE [args]");

	/* No SA_RESTART: sleeps return early and the loops look at tgt_stop. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = tgt_on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL))
		tgt_die("sigaction(SIGTERM): %m");
}

/* Value of "--name VALUE" among the target args, or def. */
static TGT_UNUSED const char *tgt_arg(const char *name, const char *def)
{
	int i;

	for (i = 1; i + 1 < tgt_argc; i++)
		if (!strncmp(tgt_argv[i], "--", 2) && !strcmp(tgt_argv[i] + 2, name))
			return tgt_argv[i + 1];
	return def;
}

static TGT_UNUSED int tgt_flag(const char *name)
{
	int i;

	for (i = 1; i < tgt_argc; i++)
		if (!strncmp(tgt_argv[i], "--", 2) && !strcmp(tgt_argv[i] + 2, name))
			return 1;
	return 0;
}

static TGT_UNUSED long tgt_arg_long(const char *name, long def)
{
	const char *s = tgt_arg(name, NULL);
	char *end;
	long v;

	if (!s)
		return def;
	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || *end || end == s)
		tgt_die("--%s: not a number: %s", name, s);
	return v;
}

static TGT_UNUSED void tgt_write_file(const char *path, const char *data)
{
	char tmp[PATH_MAX + 8];
	size_t len = strlen(data), done = 0;
	ssize_t n;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		tgt_die("open %s: %m", tmp);
	while (done < len) {
		n = write(fd, data + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			tgt_die("write %s: %m", tmp);
		done += n;
	}
	close(fd);
	if (rename(tmp, path))
		tgt_die("rename %s: %m", tmp);
}

/* Write text to /proc/PID/NAME in one write (uid_map, gid_map, setgroups
 * take no partial writes). */
static TGT_UNUSED void tgt_write_proc(pid_t pid, const char *name, const char *text)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text))
		tgt_die("write %s: %m", path);
	close(fd);
}

__attribute__((format(printf, 1, 2)))
static TGT_UNUSED void tgt_info(const char *fmt, ...)
{
	size_t used = strlen(tgt_infobuf);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tgt_infobuf + used, sizeof(tgt_infobuf) - used, fmt, ap);
	va_end(ap);
	used = strlen(tgt_infobuf);
	if (used + 1 < sizeof(tgt_infobuf))
		strcat(tgt_infobuf, "\n");
}

static TGT_UNUSED void tgt_ready(void)
{
	char buf[sizeof(tgt_infobuf) + 16];

	snprintf(buf, sizeof(buf), "ready\n%s", tgt_infobuf);
	fflush(NULL);
	tgt_write_file(tgt_ready_path, buf);
	if (tgt_close_stdio) {
		close(0);
		close(1);
		close(2);
	}
}

/* Record the first failure; later ones are usually consequences. */
__attribute__((format(printf, 2, 3)))
static TGT_UNUSED int tgt_check(int ok, const char *fmt, ...)
{
	va_list ap;

	if (ok || tgt_failmsg[0])
		return ok;
	va_start(ap, fmt);
	vsnprintf(tgt_failmsg, sizeof(tgt_failmsg), fmt, ap);
	va_end(ap);
	return ok;
}

static TGT_UNUSED int tgt_failed(void)
{
	return tgt_failmsg[0] != 0;
}

__attribute__((noreturn))
static TGT_UNUSED void tgt_finish(void)
{
	char buf[sizeof(tgt_failmsg) + 16];

	if (tgt_failmsg[0])
		snprintf(buf, sizeof(buf), "FAIL: %s\n", tgt_failmsg);
	else
		snprintf(buf, sizeof(buf), "PASS\n");
	tgt_write_file(tgt_result_path, buf);
	exit(tgt_failmsg[0] ? 1 : 0);
}

/* Read exactly n bytes, waiting up to 20 s for each part (a non-blocking
 * fd included); returns how many came before EOF, an error or the wait ran
 * out. */
static TGT_UNUSED int tgt_read_all(int fd, char *buf, int n)
{
	int got = 0;

	while (got < n) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 20000) != 1)
			return got;
		int r = read(fd, buf + got, n - got);
		if (r <= 0 && !(r < 0 && errno == EAGAIN))
			return got;
		if (r > 0)
			got += r;
	}
	return got;
}

/* Sleep ms milliseconds; returns early (EINTR) when a signal arrives. */
static TGT_UNUSED void tgt_msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Field n (1-based, as in proc(5)) of /proc/PID/stat from field 3 (the
 * state) on, as a string in buf; NULL when there is no such process. */
static TGT_UNUSED const char *tgt_proc_stat(pid_t pid, int n, char *buf, size_t size)
{
	char path[64], *p;
	int fd, len, i;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return NULL;
	len = read(fd, buf, size - 1);
	close(fd);
	if (len <= 0)
		return NULL;
	buf[len] = 0;
	p = strrchr(buf, ')');
	if (!p)
		return NULL;
	p += 2;                         /* field 3 */
	for (i = 3; i < n && p; i++) {
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	return p;
}

/* Wait for SIGTERM without holding any extra resource. */
static TGT_UNUSED void tgt_wait_stop(void)
{
	while (!tgt_stop)
		tgt_msleep(10);
}

#endif
