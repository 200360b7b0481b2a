/* The least work any simulator must do for one iteration of the seed loop, and so
 * a lower bound for ptreclaim: allocate a PTE table and link it; fill its 512
 * entries, taking a frame from a free list for each; clear them, returning each
 * frame and counting RSS; scan the table for none; clear the PMD entry; free the
 * table. Prints nanoseconds per iteration (best of 5 runs of N iterations).
 *
 * "limit bulk N" is the bound for the bulk API instead: N accesses at random
 * addresses in 4 GiB (xorshift, fixed seed), each walking a 3-level radix of
 * 512-entry tables allocated on demand from a pool and, where the entry is none,
 * taking a frame from a free list. Prints nanoseconds per access (best of 3).
 * Usage: limit [N] | limit bulk [N] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PTRS 512
#define NFRAMES 4096

struct frame { int32_t refcount, mapcount; uint32_t next, flags; };

static struct frame frames[NFRAMES];
static uint64_t tables[4][PTRS] __attribute__((aligned(4096)));
static uint32_t free_tables[4], nfree_tables;
static uint32_t free_head;
static uint64_t pmd[PTRS];
static long rss, pgtables_bytes;

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + t.tv_nsec;
}

static void iteration(unsigned long i)
{
	unsigned long slot = i % PTRS;
	uint32_t t = free_tables[--nfree_tables];
	uint64_t *pte = tables[t];
	memset(pte, 0, sizeof tables[t]);
	pmd[slot] = ((uint64_t)t << 12) | 0x67;
	pgtables_bytes += 4096;
	for (int k = 0; k < PTRS; k++) {            /* fault in: a frame per entry */
		uint32_t f = free_head;
		free_head = frames[f].next;
		frames[f].refcount = 1;
		frames[f].mapcount = 1;
		pte[k] = ((uint64_t)f << 12) | 0x8000000000000067ULL;
		rss++;
	}
	for (int k = 0; k < PTRS; k++) {            /* zap: clear, free the frame, count */
		uint32_t f = (uint32_t)((pte[k] >> 12) & 0xffffffffff);
		pte[k] = 0;
		frames[f].mapcount = 0;
		frames[f].refcount = 0;
		frames[f].next = free_head;
		free_head = f;
		rss--;
	}
	uint64_t acc = 0;                            /* the PTRS_PER_PTE none scan */
	for (int k = 0; k < PTRS; k++)
		acc |= pte[k] & ~0x60ULL;
	if (acc == 0) {                              /* pmd_clear + free the table */
		pmd[slot] = 0;
		pgtables_bytes -= 4096;
		free_tables[nfree_tables++] = t;
	}
}

/* --- the bulk bound ------------------------------------------------------------ */

#define BULK_SPAN (4UL << 30)
static uint64_t *bulk_pool;          /* tables, 512 entries each */
static uint32_t bulk_next_table;
static uint64_t bulk_top[512];       /* one PUD-like level: 512 GiB / 1 GiB */
static struct frame *bulk_frames;
static uint32_t bulk_free_head, bulk_frames_used;

static uint64_t *bulk_table(uint64_t *entry)
{
	if (!*entry)
		*entry = ((uint64_t)(++bulk_next_table) << 12) | 0x67;
	return bulk_pool + (size_t)(*entry >> 12) * PTRS;
}

static double bulk_run(long n)
{
	size_t tables = 2 + BULK_SPAN / (2UL << 20) + BULK_SPAN / (1UL << 30);
	free(bulk_pool);
	bulk_pool = calloc((tables + 1) * PTRS, sizeof(uint64_t));
	memset(bulk_top, 0, sizeof bulk_top);
	bulk_next_table = 0;
	for (uint32_t f = 1; f < (uint32_t)(n + 2); f++)
		bulk_frames[f].next = f + 1;
	bulk_free_head = 1;
	bulk_frames_used = 0;
	uint64_t x = 42;
	uint64_t t0 = now_ns();
	for (long i = 0; i < n; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		uint64_t addr = x % BULK_SPAN;
		uint64_t *pmd = bulk_table(&bulk_top[(addr >> 30) & 511]);
		uint64_t *pte = bulk_table(&pmd[(addr >> 21) & 511]);
		uint64_t *e = &pte[(addr >> 12) & 511];
		if (!*e) {
			uint32_t f = bulk_free_head;
			bulk_free_head = bulk_frames[f].next;
			bulk_frames[f].refcount = 1;
			bulk_frames[f].mapcount = 1;
			*e = ((uint64_t)f << 12) | 0x8000000000000067ULL;
			bulk_frames_used++;
		} else {
			*e |= 0x60;
		}
	}
	return (double)(now_ns() - t0) / n;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "bulk")) {
		long n = argc > 2 ? atol(argv[2]) : 1000000;
		bulk_frames = calloc(n + 2, sizeof *bulk_frames);
		double best = 1e30;
		for (int run = 0; run < 3; run++) {
			double ns = bulk_run(n);
			if (ns < best)
				best = ns;
		}
		printf("%ld %.1f\n", n, best);
		return 0;
	}
	long n = argc > 1 ? atol(argv[1]) : 25600;
	for (uint32_t f = 1; f < NFRAMES; f++)
		frames[f].next = f + 1 < NFRAMES ? f + 1 : 0;
	free_head = 1;
	for (uint32_t t = 0; t < 4; t++)
		free_tables[nfree_tables++] = t;
	double best = 1e30;
	for (int run = 0; run < 5; run++) {
		uint64_t t0 = now_ns();
		for (long i = 0; i < n; i++) {
			iteration(i);
			__asm__ volatile("" ::: "memory");
		}
		double ns = (double)(now_ns() - t0) / n;
		if (ns < best)
			best = ns;
	}
	if (rss != 0 || pgtables_bytes != 0)
		return 1;
	printf("%ld %.1f\n", n, best);
	return 0;
}
