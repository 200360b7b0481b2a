/* The seed loop on the host kernel, timed: mmap 50 GiB at 0x200000000000, then
 * N times { write every 4 KiB page of the next 2 MiB; madvise(MADV_DONTNEED) it }.
 * Prints: iterations, total nanoseconds, VmPTE delta in kB.
 * Usage: seed_loop [N] [free]   (free: MADV_FREE instead of MADV_DONTNEED) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static char status_buf[8192];

static long vmpte_kb(void)
{
	int fd = open("/proc/self/status", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, status_buf, sizeof status_buf - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	status_buf[n] = 0;
	char *p = strstr(status_buf, "VmPTE:");
	return p ? strtol(p + 6, NULL, 10) : -1;
}

int main(int argc, char **argv)
{
	const size_t step = 2UL << 20, size = 50UL << 30;
	long n = argc > 1 ? atol(argv[1]) : 25600;
	int advice = argc > 2 && !strcmp(argv[2], "free") ? MADV_FREE : MADV_DONTNEED;
	if (n < 1 || (size_t)n * step > size)
		return 2;
	long before = vmpte_kb();
	char *p = mmap((void *)0x200000000000UL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		char *q = p + i * step;
		for (size_t off = 0; off < step; off += 4096)
			*(volatile char *)(q + off) = 1;
		if (madvise(q, step, advice)) {
			perror("madvise");
			return 1;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long after = vmpte_kb();
	long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	printf("%ld %lld %ld\n", n, ns, after - before);
	return 0;
}
