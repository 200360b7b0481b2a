/*
 * ptreclaim._kernelrun: run an operation script with real syscalls on the host kernel and
 * report /proc/self/status after every operation, with nothing but the script's own work in
 * the counts.  Design and the argument for exactness: docs/kernel-runner.md.
 *
 * Python calls run(ops, base, window, so_ranges, fork_depth, timeout) (ptreclaim/kernel.py
 * encodes the ops and decodes the buffer).  The C side maps one shared
 * anonymous buffer (header | baselines | ops | results), forks the runner R and waits.  R
 * (and every process R's script forks) runs only the C code below: no Python, no malloc,
 * only static buffers, the stack, the shared buffer and libc's syscall()/sigsetjmp.
 * Everything such a process will touch after its baseline is faulted in before it.
 *
 * Buffer layout, all uint64 words (the same constants are exported to Python):
 *   [0, HDR_WORDS)                       header (HDR_*)
 *   CAL: (MAX_FORK_DEPTH + 1) * NFIELDS  baseline of the process at each fork depth
 *   OPS: nops * OP_WORDS                 encoded operations (OP_*)
 *   RES: nops * RES_WORDS                results (RES_*)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define NFIELDS 8          /* order: VmPTE VmRSS RssAnon RssFile RssShmem VmSize VmLck VmSwap */
#define MAX_FORK_DEPTH 8
#define HDR_WORDS 16
#define OP_WORDS 8
#define RES_WORDS 16
#define MAX_SO_RANGES 16
#define MAX_FILES 64       /* names a script's `file` lines may create */
#define MAGIC 0x70747265636c6d31ULL /* "ptreclm1" */

enum { HDR_MAGIC, HDR_STATE, HDR_DETAIL0, HDR_DETAIL1, HDR_DETAIL2, HDR_NOPS, HDR_NDONE,
       HDR_DEPTH, HDR_BASE, HDR_WINDOW };
enum { OP_CODE, OP_ADDR, OP_LEN, OP_ARG, OP_FLAGS, OP_LINENO, OP_NEWLEN, OP_NEWADDR };
enum { RES_ERRNO, RES_RET, RES_FAULT, RES_DEPTH, RES_PID, RES_FIELDS };
enum { OPC_MMAP = 1, OPC_MUNMAP, OPC_MPROTECT, OPC_MLOCK, OPC_MUNLOCK, OPC_MADVISE, OPC_TOUCH,
       OPC_FORK, OPC_FORKP, OPC_MREMAP, OPC_FILE, OPC_CLOSE };
/* Words of a file-related record that reuse mremap's slots:
 *   OPC_MMAP:  OP_NEWLEN = file index + 1 (0: anonymous), OP_NEWADDR = file offset
 *   OPC_FILE:  OP_ADDR = the descriptor the Python side holds, OP_LEN = file index,
 *              OP_ARG = open flags (O_RDONLY or O_RDWR)
 *   OPC_CLOSE: OP_LEN = file index */
enum { OP_FILEIDX = 6, OP_OFFSET = 7 };
/* HDR_STATE values; DETAIL words say more for the errors. */
enum { ST_NEW, ST_SETUP, ST_RUNNING, ST_DONE,
       ST_ERR_SETUP = 10,    /* DETAIL0: step (SETUP_*), DETAIL1: errno */
       ST_ERR_WINDOW_BUSY,   /* DETAIL0/1: start/end of a mapping inside the window */
       ST_ERR_CRASH,         /* DETAIL0: signal, DETAIL1: address, DETAIL2: op index */
       ST_ERR_CHILD };       /* DETAIL0: wait status of a script process, DETAIL2: op index */
enum { SETUP_MAPS = 1, SETUP_SIGNALS, SETUP_GUARD, SETUP_PIPE, SETUP_STATUS, SETUP_FORK };

#ifdef __linux__

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_NOHUGEPAGE
#define MADV_NOHUGEPAGE 15
#endif

#define PG 4096UL

/* ---- state of a runner process (static: inherited by its forks, never malloc'ed) ---- */

static volatile uint64_t *shm;        /* the shared buffer */
static uint64_t shm_len;
static uint64_t *hdr, *cal, *ops, *res;
static uint64_t so_ranges[MAX_SO_RANGES][2]; /* this module's loaded segments */
static int n_so_ranges;
static void *guard_page;              /* PROT_NONE page: exercises the SIGSEGV path */
static int pipe_rd = -1, pipe_wr = -1; /* idle processes wait for EOF on it */
static pid_t runner_parent;
/* The script's descriptor of each file, by index (-1: not open).  Static, so a fork copies
 * it along with the descriptor table. */
static int script_fd[MAX_FILES];
static char fd_path[64];              /* "/proc/self/fd/N", formatted by hand */

static char status_buf[16384] __attribute__((aligned(4096)));
static char maps_buf[65536];
static uint64_t vma_list[4096][2];
static char altstack[65536] __attribute__((aligned(4096)));

static sigjmp_buf touch_env;
static volatile sig_atomic_t in_touch;
static volatile uint64_t fault_addr;
static volatile int fault_sig;
static volatile long current_op = -1;

static const char *const field_names[NFIELDS] = {
	"VmPTE", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSize", "VmLck", "VmSwap",
};

/* Every kernel call goes through libc's syscall(): one small, always-warm code path. */
static long sys_read_all(int fd, char *buf, unsigned long cap)
{
	unsigned long n = 0;
	for (;;) {
		long r = syscall(SYS_read, fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (unsigned long)r;
		if (n >= cap - 1)
			break;
	}
	buf[n] = 0;
	return (long)n;
}

static int64_t parse_kb(const char *p)
{
	int64_t v = 0;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p < '0' || *p > '9')
		return -1;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

/* [s, e) == name?  Hand-written: after the baseline no libc string function may run with
 * inputs the warm-up did not give it. */
static int name_is(const char *s, const char *e, const char *name)
{
	for (; s < e; s++, name++)
		if (*name != *s)
			return 0;
	return *name == 0;
}

/* /proc/self/status -> out[NFIELDS] in kB (-1 for a field this kernel does not show).
 * Opened each time: /proc/self must name the process reading, also after a fork. */
static int read_status(uint64_t *out)
{
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	sys_read_all(fd, status_buf, sizeof status_buf);
	syscall(SYS_close, fd);
	for (int i = 0; i < NFIELDS; i++)
		out[i] = (uint64_t)-1;
	for (char *line = status_buf; *line; ) {
		char *colon = line;
		while (*colon && *colon != ':' && *colon != '\n')
			colon++;
		if (*colon == ':')
			for (int i = 0; i < NFIELDS; i++)
				if (name_is(line, colon, field_names[i]))
					out[i] = (uint64_t)parse_kb(colon + 1);
		while (*line && *line != '\n')
			line++;
		if (*line)
			line++;
	}
	return 0;
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (in_touch) {
		in_touch = 0;
		fault_sig = sig;
		fault_addr = (uint64_t)(uintptr_t)si->si_addr;
		siglongjmp(touch_env, 1);
	}
	/* A fault outside a touch is a runner bug: say so in the header, never hang. */
	hdr[HDR_DETAIL0] = (uint64_t)sig;
	hdr[HDR_DETAIL1] = (uint64_t)(uintptr_t)si->si_addr;
	hdr[HDR_DETAIL2] = (uint64_t)current_op;
	hdr[HDR_STATE] = ST_ERR_CRASH;
	_exit(3);
}

/* One load or store per 4 KiB page of [addr, addr+len), lowest first: the first at addr,
 * the others at the start of their page (as MM.touch, docs/api.md).  Returns 0, or
 * -signal with *fault = the address of the access that raised it. */
static int64_t do_touch(uint64_t addr, uint64_t len, int write, uint64_t *fault)
{
	if (len == 0)
		return 0;
	uint64_t end = addr + len;
	if (sigsetjmp(touch_env, 1)) {
		*fault = fault_addr;
		return -(int64_t)fault_sig;
	}
	in_touch = 1;
	for (uint64_t p = addr; p < end; p = (p & ~(PG - 1)) + PG) {
		if (write)
			*(volatile char *)(uintptr_t)p = 1;
		else
			(void)*(volatile char *)(uintptr_t)p;
	}
	in_touch = 0;
	return 0;
}

/* Open the file the Python side created (and holds at descriptor `src`) again, through
 * /proc/self/fd, with the script's access mode: a new open file description, as open()
 * of the file would give.  No libc string function: the path is formatted here. */
static long open_file(uint64_t src, int flags)
{
	static const char prefix[] = "/proc/self/fd/";
	char digits[24];
	int nd = 0, n = 0;
	do {
		digits[nd++] = (char)('0' + src % 10);
		src /= 10;
	} while (src && nd < (int)sizeof digits);
	for (; prefix[n]; n++)
		fd_path[n] = prefix[n];
	while (nd)
		fd_path[n++] = digits[--nd];
	fd_path[n] = 0;
	return syscall(SYS_openat, AT_FDCWD, fd_path, (long)(flags | O_CLOEXEC));
}

static long raw_fork(void)
{
	/* clone(SIGCHLD) rather than libc fork(): no atfork handlers, no libc locks, the same
	 * syscall() path as every other operation. */
	return syscall(SYS_clone, (long)SIGCHLD, 0L, 0L, 0L, 0L);
}

/* Run op record `op`, write errno/ret/fault into result record `r` (status not included). */
static void exec_op(const uint64_t *op, uint64_t *r)
{
	uint64_t a = op[OP_ADDR], len = op[OP_LEN];
	int arg = (int)(int32_t)(uint32_t)op[OP_ARG];
	long rc = 0;
	int64_t err = 0;
	uint64_t fault = 0;
	errno = 0;
	switch (op[OP_CODE]) {
	case OPC_MMAP: {
		uint64_t fi = op[OP_FILEIDX];
		long fd = fi && fi <= MAX_FILES ? (long)script_fd[fi - 1] : -1L;
		rc = syscall(SYS_mmap, a, len, arg, (long)op[OP_FLAGS], fd, (long)op[OP_OFFSET]);
		break;
	}
	case OPC_FILE:
		rc = len < MAX_FILES ? open_file(a, arg) : (errno = EBADF, -1);
		if (rc >= 0)
			script_fd[len] = (int)rc;
		break;
	case OPC_CLOSE:
		/* A name already closed passes -1: EBADF, whatever number the kernel reused. */
		rc = syscall(SYS_close, len < MAX_FILES ? (long)script_fd[len] : -1L);
		if (len < MAX_FILES)
			script_fd[len] = -1;
		break;
	case OPC_MUNMAP:
		rc = syscall(SYS_munmap, a, len);
		break;
	case OPC_MPROTECT:
		rc = syscall(SYS_mprotect, a, len, arg);
		break;
	case OPC_MLOCK:
		rc = syscall(SYS_mlock, a, len);
		break;
	case OPC_MUNLOCK:
		rc = syscall(SYS_munlock, a, len);
		break;
	case OPC_MADVISE:
		rc = syscall(SYS_madvise, a, len, arg);
		break;
	case OPC_TOUCH:
		err = do_touch(a, len, arg, &fault);
		break;
	case OPC_MREMAP:
		/* old_len in OP_LEN, flags (unsigned long) in OP_FLAGS */
		rc = syscall(SYS_mremap, a, len, op[OP_NEWLEN], op[OP_FLAGS], op[OP_NEWADDR]);
		break;
	default:
		rc = -1;
		errno = ENOSYS;
	}
	if (rc == -1 && op[OP_CODE] != OPC_TOUCH)
		err = errno;
	r[RES_ERRNO] = (uint64_t)err;
	r[RES_RET] = ((op[OP_CODE] == OPC_MMAP || op[OP_CODE] == OPC_MREMAP) && !err) ? (uint64_t)rc : 0;
	r[RES_FAULT] = fault;
}

/* Exercise every code path a script process runs after its baseline, with arguments that
 * change nothing: the /proc read, each syscall, the SIGSEGV path (on guard_page), result
 * writing.  The libc functions involved (syscall, sigsetjmp/siglongjmp, errno) take one
 * path whatever the arguments, so running them here faults in all their pages. */
static void warm_paths(void)
{
	static uint64_t scratch_res[RES_WORDS], st[NFIELDS];
	uint64_t g = (uint64_t)(uintptr_t)guard_page;
	const uint64_t warm_ops[][OP_WORDS] = {
		{ OPC_MMAP, 0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, 0 },  /* EINVAL */
		{ OPC_MUNMAP, g, 0, 0, 0, 0 },                                  /* EINVAL */
		{ OPC_MPROTECT, g, 0, PROT_NONE, 0, 0 },
		{ OPC_MLOCK, g, 0, 0, 0, 0 },
		{ OPC_MUNLOCK, g, 0, 0, 0, 0 },
		{ OPC_MADVISE, g, 0, MADV_NORMAL, 0, 0 },
		{ OPC_MREMAP, g, 0, 0, 0, 0, 0, 0 },                            /* EINVAL */
		{ OPC_MMAP, 0, 0, PROT_READ, MAP_PRIVATE, 0, MAX_FILES, 0 },    /* EINVAL, file path */
		{ OPC_FILE, (uint64_t)-1, MAX_FILES - 1, O_RDONLY, 0, 0 },      /* ENOENT */
		{ OPC_CLOSE, 0, MAX_FILES - 1, 0, 0, 0 },                       /* EBADF: close(-1) */
		{ OPC_TOUCH, g, 1, 0, 0, 0 },                                   /* SIGSEGV */
		{ OPC_TOUCH, g, 1, 1, 0, 0 },                                   /* SIGSEGV */
		{ OPC_TOUCH, g, 0, 1, 0, 0 },
	};
	for (unsigned i = 0; i < sizeof warm_ops / sizeof warm_ops[0]; i++) {
		exec_op(warm_ops[i], scratch_res);
		read_status(st);
		for (int k = 0; k < NFIELDS; k++)
			((volatile uint64_t *)scratch_res)[RES_FIELDS + k] = st[k];
	}
}

/* Fault in everything a process needs after its baseline: this module's pages (code and
 * data; a fork does not copy PTEs of file-backed VMAs without anon_vma), the shared buffer
 * (a fork copies no PTEs of shared mappings), and the libc paths (warm_paths). */
static void warm_all(void)
{
	for (unsigned long i = 0; i < sizeof status_buf; i += PG)
		((volatile char *)status_buf)[i] = 0;
	for (int i = 0; i < n_so_ranges; i++)
		for (uint64_t p = so_ranges[i][0]; p < so_ranges[i][1]; p += PG)
			(void)*(volatile char *)(uintptr_t)p;
	for (uint64_t off = 0; off < shm_len; off += PG) {
		volatile char *p = (volatile char *)shm + off;
		*p = *p;
	}
	warm_paths();
	warm_paths();
}

/* Stack pages below the current frame, so that deeper calls and the signal path find them
 * present; a fork copies them (the stack has an anon_vma). */
__attribute__((noinline)) static void prefault_stack(void)
{
	volatile char buf[65536];
	for (unsigned long i = 0; i < sizeof buf; i += 512)
		buf[i] = 0;
}

static void setup_fail(int step, int err)
{
	hdr[HDR_DETAIL0] = (uint64_t)step;
	hdr[HDR_DETAIL1] = (uint64_t)err;
	hdr[HDR_STATE] = ST_ERR_SETUP;
	_exit(2);
}

static uint64_t parse_hex(const char **pp)
{
	const char *p = *pp;
	uint64_t v = 0;
	for (;; p++) {
		int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else
			break;
		v = (v << 4) | (uint64_t)d;
	}
	*pp = p;
	return v;
}

/* Read /proc/self/maps: refuse a window that holds anything, and list the runner's own
 * VMAs.  Streams through a static buffer a line at a time. */
static int scan_maps(uint64_t wstart, uint64_t wend)
{
	int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		setup_fail(SETUP_MAPS, errno);
	unsigned long have = 0;
	int nvma = 0;
	for (;;) {
		long r = syscall(SYS_read, fd, maps_buf + have, sizeof maps_buf - 1 - have);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			setup_fail(SETUP_MAPS, errno);
		have += (unsigned long)r;
		maps_buf[have] = 0;
		char *line = maps_buf, *nl;
		while ((nl = memchr(line, '\n', (unsigned long)(maps_buf + have - line))) != NULL) {
			const char *p = line;
			uint64_t s = parse_hex(&p), e = 0;
			if (*p == '-') {
				p++;
				e = parse_hex(&p);
			}
			if (s < wend && e > wstart) {
				hdr[HDR_DETAIL0] = s;
				hdr[HDR_DETAIL1] = e;
				hdr[HDR_STATE] = ST_ERR_WINDOW_BUSY;
				_exit(2);
			}
			if (nvma < (int)(sizeof vma_list / sizeof vma_list[0])) {
				vma_list[nvma][0] = s;
				vma_list[nvma][1] = e;
				nvma++;
			}
			line = nl + 1;
		}
		unsigned long rest = (unsigned long)(maps_buf + have - line);
		memmove(maps_buf, line, rest);
		have = rest;
		if (r == 0)
			break;
		if (have >= sizeof maps_buf - 1)
			setup_fail(SETUP_MAPS, E2BIG);
	}
	syscall(SYS_close, fd);
	return nvma;
}

static void child_setup(void)
{
	/* Die with the parent (the Python side kills R's process group on timeout; this also
	 * covers a parent that crashes). */
	pid_t parent = runner_parent;
	syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0L, 0L, 0L);
	if ((pid_t)syscall(SYS_getppid) != parent)
		_exit(4);
	runner_parent = (pid_t)syscall(SYS_getpid);
	warm_all();
}

static pid_t fork_child(void)
{
	runner_parent = (pid_t)syscall(SYS_getpid);
	long pid = raw_fork();
	if (pid == 0)
		child_setup();
	return (pid_t)pid;
}

static void reap_all(void)
{
	int st;
	while (syscall(SYS_wait4, -1L, &st, 0L, 0L) > 0 || errno == EINTR)
		;
}

/* Wait for the process that took over the script; record it if it died abnormally. */
static void wait_active_child(pid_t pid, long op_index)
{
	int st = 0;
	long r;
	do
		r = syscall(SYS_wait4, (long)pid, &st, 0L, 0L);
	while (r < 0 && errno == EINTR);
	if (r == pid && !(WIFEXITED(st) && WEXITSTATUS(st) == 0) &&
	    hdr[HDR_STATE] == ST_RUNNING) {
		hdr[HDR_DETAIL0] = (uint64_t)st;
		hdr[HDR_DETAIL2] = (uint64_t)op_index;
		hdr[HDR_STATE] = ST_ERR_CHILD;
	}
}

/* Calibration chain: the process at depth level-1 forks one at depth `level`, which warms
 * up exactly as a script's `fork` child does and records its status as that depth's
 * baseline, before the script has put anything in the window. */
static void calibrate(int level, int maxdepth)
{
	pid_t pid = fork_child();
	if (pid < 0)
		setup_fail(SETUP_FORK, errno);
	if (pid == 0) {
		if (read_status(&cal[level * NFIELDS]) < 0)
			setup_fail(SETUP_STATUS, errno);
		if (level < maxdepth)
			calibrate(level + 1, maxdepth);
		_exit(0);
	}
	wait_active_child(pid, -1);
	if (hdr[HDR_STATE] != ST_SETUP)
		_exit(2);
}

/* Idle until the active process closes the last write end of the pipe (end of script). */
static void idle_until_end(void)
{
	char c;
	syscall(SYS_close, pipe_wr);
	while (syscall(SYS_read, pipe_rd, &c, 1L) < 0 && errno == EINTR)
		;
	reap_all();
	_exit(0);
}

static void run_script(void)
{
	uint64_t nops = hdr[HDR_NOPS];
	uint64_t depth = 0;
	for (uint64_t i = 0; i < nops; i++) {
		const uint64_t *op = &ops[i * OP_WORDS];
		uint64_t *r = &res[i * RES_WORDS];
		current_op = (long)i;
		if (op[OP_CODE] == OPC_FORK || op[OP_CODE] == OPC_FORKP) {
			pid_t pid = fork_child();
			r[RES_ERRNO] = pid < 0 ? (uint64_t)errno : 0;
			r[RES_RET] = r[RES_FAULT] = 0;
			if (pid > 0 && op[OP_CODE] == OPC_FORK) {
				/* The child carries on; this process only keeps its memory alive. */
				syscall(SYS_close, pipe_wr);
				wait_active_child(pid, (long)i);
				reap_all();
				_exit(0);
			}
			if (pid == 0 && op[OP_CODE] == OPC_FORKP)
				idle_until_end();
			if (pid == 0)
				depth++;
		} else {
			exec_op(op, r);
		}
		read_status(&r[RES_FIELDS]);
		r[RES_DEPTH] = depth;
		r[RES_PID] = (uint64_t)syscall(SYS_getpid);
		hdr[HDR_NDONE] = i + 1;
	}
	hdr[HDR_STATE] = ST_DONE;
	syscall(SYS_close, pipe_wr);
	reap_all();
	_exit(0);
}

static void runner_main(uint64_t base, uint64_t window, int fork_depth)
{
	hdr[HDR_STATE] = ST_SETUP;
	for (int i = 0; i < MAX_FILES; i++)
		script_fd[i] = -1;
	/* Its own process group, so the Python side can kill every process of a run at once. */
	syscall(SYS_setpgid, 0L, 0L);
	syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0L, 0L, 0L);
	if ((pid_t)syscall(SYS_getppid) != runner_parent)
		_exit(4);

	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
	for (unsigned long i = 0; i < sizeof altstack; i += PG)
		altstack[i] = 0;
	if (sigaltstack(&ss, NULL) < 0)
		setup_fail(SETUP_SIGNALS, errno);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, NULL) < 0 || sigaction(SIGBUS, &sa, NULL) < 0)
		setup_fail(SETUP_SIGNALS, errno);
	/* A fault signal that is blocked kills the process instead of reaching the handler;
	 * the calling Python thread's mask is inherited. */
	sigset_t faults;
	sigemptyset(&faults);
	sigaddset(&faults, SIGSEGV);
	sigaddset(&faults, SIGBUS);
	if (sigprocmask(SIG_UNBLOCK, &faults, NULL) < 0)
		setup_fail(SETUP_SIGNALS, errno);
	/* Children must be waitable whatever the Python process did with SIGCHLD. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	sigaction(SIGCHLD, &dfl, NULL);
	sigaction(SIGPIPE, &dfl, NULL);

	/* mlock in a script should not fail for want of a limit the runner could raise. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_MEMLOCK, &rl);
	}

	long g = syscall(SYS_mmap, 0L, PG, (long)PROT_NONE, (long)(MAP_PRIVATE | MAP_ANONYMOUS), -1L, 0L);
	if (g == -1)
		setup_fail(SETUP_GUARD, errno);
	guard_page = (void *)g;

	int pfd[2];
	if (syscall(SYS_pipe2, pfd, (long)O_CLOEXEC) < 0)
		setup_fail(SETUP_PIPE, errno);
	pipe_rd = pfd[0];
	pipe_wr = pfd[1];

	int nvma = scan_maps(base, base + window);
	/* khugepaged must not collapse (or the fault path install THPs in) the runner's own
	 * memory while a script runs: that would move RssAnon and VmPTE.  NOHUGEPAGE on every
	 * runner VMA; the window is empty, so the script's own mappings are untouched. */
	for (int i = 0; i < nvma; i++)
		syscall(SYS_madvise, vma_list[i][0], vma_list[i][1] - vma_list[i][0], (long)MADV_NOHUGEPAGE);

	prefault_stack();
	warm_all();
	if (fork_depth > 0)
		calibrate(1, fork_depth);
	/* The baseline, read through the same path as every result. */
	if (read_status(&cal[0]) < 0)
		setup_fail(SETUP_STATUS, errno);
	hdr[HDR_STATE] = ST_RUNNING;
	run_script();
}

/* ---------------------------------------------------------------- Python side ---------- */

static int kill_group(pid_t pid)
{
	return kill(-pid, SIGKILL) == 0 || kill(pid, SIGKILL) == 0;
}

static PyObject *kr_run(PyObject *self, PyObject *args)
{
	(void)self;
	Py_buffer opbuf;
	unsigned long long base, window;
	PyObject *ranges;
	double timeout;
	int fork_depth;
	if (!PyArg_ParseTuple(args, "y*KKOid", &opbuf, &base, &window, &ranges, &fork_depth, &timeout))
		return NULL;
	PyObject *result = NULL;
	void *mem = MAP_FAILED;
	uint64_t len = 0;

	if (opbuf.len % (OP_WORDS * 8)) {
		PyErr_SetString(PyExc_ValueError, "ops must be a whole number of op records");
		goto out;
	}
	if (fork_depth < 0 || fork_depth > MAX_FORK_DEPTH) {
		PyErr_Format(PyExc_ValueError, "at most %d fork operations", MAX_FORK_DEPTH);
		goto out;
	}
	PyObject *seq = PySequence_Fast(ranges, "so_ranges must be a sequence");
	if (!seq)
		goto out;
	Py_ssize_t nr = PySequence_Fast_GET_SIZE(seq);
	n_so_ranges = 0;
	for (Py_ssize_t i = 0; i < nr && n_so_ranges < MAX_SO_RANGES; i++) {
		unsigned long long s, e;
		if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK", &s, &e)) {
			Py_DECREF(seq);
			goto out;
		}
		so_ranges[n_so_ranges][0] = s & ~(PG - 1);
		so_ranges[n_so_ranges][1] = e;
		n_so_ranges++;
	}
	Py_DECREF(seq);

	uint64_t nops = (uint64_t)opbuf.len / (OP_WORDS * 8);
	uint64_t words = HDR_WORDS + (MAX_FORK_DEPTH + 1) * NFIELDS + nops * (OP_WORDS + RES_WORDS);
	len = (words * 8 + PG - 1) & ~(PG - 1);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		PyErr_SetFromErrno(PyExc_OSError);
		goto out;
	}
	shm = mem;
	shm_len = len;
	hdr = mem;
	cal = hdr + HDR_WORDS;
	ops = cal + (MAX_FORK_DEPTH + 1) * NFIELDS;
	res = ops + nops * OP_WORDS;
	memset(mem, 0, len);
	for (uint64_t i = 0; i < (MAX_FORK_DEPTH + 1) * NFIELDS; i++)
		cal[i] = (uint64_t)-1;
	memcpy(ops, opbuf.buf, (size_t)opbuf.len);
	hdr[HDR_MAGIC] = MAGIC;
	hdr[HDR_NOPS] = nops;
	hdr[HDR_DEPTH] = (uint64_t)fork_depth;
	hdr[HDR_BASE] = base;
	hdr[HDR_WINDOW] = window;
	runner_parent = getpid();

	int prev_subreaper = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &prev_subreaper, 0L, 0L, 0L);
	if (!prev_subreaper)
		prctl(PR_SET_CHILD_SUBREAPER, 1L, 0L, 0L, 0L);
	long pid = raw_fork();
	if (pid < 0) {
		PyErr_SetFromErrno(PyExc_OSError);
		if (!prev_subreaper)
			prctl(PR_SET_CHILD_SUBREAPER, 0L, 0L, 0L, 0L);
		goto out;
	}
	if (pid == 0) {
		runner_main(base, window, fork_depth);
		_exit(0);
	}

	/* Wait with the GIL released, in slices, so Ctrl-C and the timeout are honoured.
	 * WNOWAIT: R stays a zombie until the end, so its pid, and so its process group,
	 * cannot be reused by an unrelated process while we may still signal the group. */
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	int timed_out = 0, interrupted = 0;
	for (;;) {
		int exited = 0, gone = 0;
		Py_BEGIN_ALLOW_THREADS
		for (int i = 0; i < 200; i++) {
			siginfo_t si;
			memset(&si, 0, sizeof si);
			if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0) {
				gone = errno != EINTR;
				break;
			}
			if (si.si_pid == (pid_t)pid) {
				exited = 1;
				break;
			}
			struct timespec d = { 0, i < 20 ? 50000 : 1000000 };
			nanosleep(&d, NULL);
		}
		Py_END_ALLOW_THREADS
		if (exited || gone)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double el = (double)(now.tv_sec - t0.tv_sec) + 1e-9 * (double)(now.tv_nsec - t0.tv_nsec);
		interrupted = PyErr_CheckSignals() < 0;
		if (interrupted || (timeout > 0 && el > timeout)) {
			timed_out = !interrupted;
			break;
		}
	}
	/* Normally every process of the run was reaped by its parent and only R is left.  After
	 * a timeout, Ctrl-C or a crash, kill the rest; orphans come to this process (a
	 * subreaper for the run), so none is left a zombie under an init that does not reap. */
	kill_group((pid_t)pid);
	int wstatus = -1, st;
	for (;;) {
		long w = waitpid(-(pid_t)pid, &st, 0);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			break;
		if (w == pid)
			wstatus = st;
	}
	if (!prev_subreaper)
		prctl(PR_SET_CHILD_SUBREAPER, 0L, 0L, 0L, 0L);
	if (interrupted)
		goto out;
	PyObject *blob = PyBytes_FromStringAndSize((const char *)mem, (Py_ssize_t)len);
	if (blob)
		result = Py_BuildValue("(iiN)", wstatus, timed_out, blob);
out:
	if (mem != MAP_FAILED)
		munmap(mem, len);
	shm = NULL;
	PyBuffer_Release(&opbuf);
	return result;
}

#define KR_SUPPORTED 1

#else /* !__linux__ */

static PyObject *kr_run(PyObject *self, PyObject *args)
{
	(void)self;
	(void)args;
	PyErr_SetString(PyExc_OSError, "the host-kernel runner needs Linux");
	return NULL;
}

#define KR_SUPPORTED 0

#endif

static PyMethodDef kr_methods[] = {
	{ "run", kr_run, METH_VARARGS,
	  "run(ops, base, window, so_ranges, fork_depth, timeout) -> (wait_status, timed_out, buffer)\n\n"
	  "Run encoded ops in a forked runner; see ptreclaim/kernel.py for the encoding." },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef kr_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "ptreclaim._kernelrun",
	.m_doc = "Host-kernel runner for ptreclaim operation scripts (see docs/kernel-runner.md).",
	.m_size = -1,
	.m_methods = kr_methods,
};

PyMODINIT_FUNC PyInit__kernelrun(void)
{
	PyObject *m = PyModule_Create(&kr_module);
	if (!m)
		return NULL;
	struct { const char *name; long value; } consts[] = {
		{ "SUPPORTED", KR_SUPPORTED }, { "NFIELDS", NFIELDS }, { "MAX_FORK_DEPTH", MAX_FORK_DEPTH },
		{ "HDR_WORDS", HDR_WORDS }, { "OP_WORDS", OP_WORDS }, { "RES_WORDS", RES_WORDS },
		{ "MAGIC_LO", (long)(MAGIC & 0xffffffff) },
		{ "HDR_STATE", HDR_STATE }, { "HDR_DETAIL0", HDR_DETAIL0 }, { "HDR_DETAIL1", HDR_DETAIL1 },
		{ "HDR_DETAIL2", HDR_DETAIL2 }, { "HDR_NDONE", HDR_NDONE },
		{ "OPC_MMAP", OPC_MMAP }, { "OPC_MUNMAP", OPC_MUNMAP }, { "OPC_MPROTECT", OPC_MPROTECT },
		{ "OPC_MLOCK", OPC_MLOCK }, { "OPC_MUNLOCK", OPC_MUNLOCK }, { "OPC_MADVISE", OPC_MADVISE },
		{ "OPC_TOUCH", OPC_TOUCH }, { "OPC_FORK", OPC_FORK }, { "OPC_FORKP", OPC_FORKP },
		{ "OPC_MREMAP", OPC_MREMAP }, { "OP_NEWLEN", OP_NEWLEN }, { "OP_NEWADDR", OP_NEWADDR },
		{ "OPC_FILE", OPC_FILE }, { "OPC_CLOSE", OPC_CLOSE }, { "OP_FILEIDX", OP_FILEIDX },
		{ "OP_OFFSET", OP_OFFSET }, { "MAX_FILES", MAX_FILES },
		{ "ST_NEW", ST_NEW }, { "ST_SETUP", ST_SETUP }, { "ST_RUNNING", ST_RUNNING },
		{ "ST_DONE", ST_DONE }, { "ST_ERR_SETUP", ST_ERR_SETUP },
		{ "ST_ERR_WINDOW_BUSY", ST_ERR_WINDOW_BUSY }, { "ST_ERR_CRASH", ST_ERR_CRASH },
		{ "ST_ERR_CHILD", ST_ERR_CHILD },
		{ "RES_ERRNO", RES_ERRNO }, { "RES_RET", RES_RET }, { "RES_FAULT", RES_FAULT },
		{ "RES_DEPTH", RES_DEPTH }, { "RES_PID", RES_PID }, { "RES_FIELDS", RES_FIELDS },
	};
	for (unsigned i = 0; i < sizeof consts / sizeof consts[0]; i++)
		if (PyModule_AddIntConstant(m, consts[i].name, consts[i].value) < 0) {
			Py_DECREF(m);
			return NULL;
		}
	return m;
}
