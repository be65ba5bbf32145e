/*
 * addcow-bench: libaddcow through its C ABI against plain pread/pwrite on the same files, in
 * the same process (issue 9). scripts/bench.sh builds and runs it; README "Benchmarks".
 *
 * Method. Every case runs at each thread count (queue depth = threads: each thread issues one
 * blocking request at a time) in interleaved rounds of the library and the raw side, after one
 * untimed warm-up run of each. The rounds alternate which side goes first (ABBA: library, raw,
 * raw, library, ...), so that neither side gains from always going second. A run of a data
 * case lasts a fixed time (--run-ms), a run of an allocating case writes every cluster of its
 * image once; offsets come from a fixed seed, the same sequence on both sides. A run gives one
 * throughput: operations of all threads / (last thread's end - first thread's start). Per case
 * the table prints both medians, the ratio of the medians (library / raw), the median and
 * range of the per-round ratios (each round pairs a library run with the raw run next to it),
 * the ratio of the median CPU times per operation, and each side's spread (min and max against
 * its median).
 *
 * Cases:
 *   rand-read-4k, rand-write-4k  4 KiB at random 4 KiB-aligned offsets of allocated clusters
 *   seq-read-1m, seq-write-1m    1 MiB sequential on allocated clusters (thread t starts at
 *                                t / threads of the image, wrapping at its end)
 *   alloc-write-4k  first writes: 4 KiB at a random 4 KiB-aligned place in a fresh cluster of a
 *                   64 KiB-cluster image over a backing file, each cluster once, in random
 *                   order. The raw side is the physical limit, done by hand as the library
 *                   must: pread the cluster's untouched head and tail from the backing file
 *                   (skipped when empty), pwritev head + data + tail to a fresh sparse file.
 *   alloc-write-1m  first writes of 1 MiB, sequential: whole clusters, nothing to read from
 *                   the backing file; the raw side pwrites to a fresh sparse file.
 *   close-clean     addcow_close of an image with nothing to write back (timed; whether it
 *                   syncs is counted by strace in scripts/bench.sh, --open-close below).
 * The data cases share one fully allocated image over a backing file; the raw side reads and
 * writes its image file (the same file) through a descriptor of its own. The allocating cases
 * make fresh files for every run (untimed) and truncate them away after it, so that no dirty
 * page of one run is written back during the next.
 *
 * Buffered (default): the page cache is warm (every file was just written, and the data image
 * is read once before the rounds), so the figures show the library's CPU cost over raw I/O.
 * --direct: O_DIRECT on the raw side, ADDCOW_OPEN_DIRECT on the library side (when this
 * library's header has it).
 */
#define _GNU_SOURCE /* O_DIRECT */

#include <addcow.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define KIB ((uint64_t)1024)
#define MIB (KIB * KIB)
#define CLUSTER (64 * KIB)
#define BLOCK (4 * KIB)
#define ALIGN 4096 /* buffers, for O_DIRECT */
#define MAX_THREADS 64
#define MAX_ROUNDS 101

/* ---- configuration ---- */

struct config {
    const char *parent;  /* where the temporary directory goes */
    uint64_t size;       /* the data image, bytes */
    uint64_t alloc_size; /* the image of the allocating cases, bytes */
    double run_s;        /* how long a run of a data case lasts, seconds */
    int rounds;
    int threads[MAX_THREADS];
    int nthreads;
    uint64_t seed;
    bool direct;
    const char *cases; /* comma-separated names, NULL = all */
    const char *csv;
};

static struct config cfg = {
    .size = 256 * MIB,
    .alloc_size = 256 * MIB,
    .run_s = 0.2,
    .rounds = 11,
    .threads = { 1, 2 },
    .nthreads = 2,
    .seed = 1,
};

/* The library's open flags and the raw side's extra open(2) flags. */
static uint32_t lib_flags = ADDCOW_OPEN_RDWR;
static int raw_flags;

/* ---- errors and files ---- */

static char dir[PATH_MAX]; /* the temporary directory, "" until made */
static const char *const file_names[] = {
    "backing.raw", "data.add-cow", "data.raw", "alloc-lib.add-cow", "alloc-lib.raw",
    "alloc-raw.raw",
};

static void remove_files(void)
{
    char p[PATH_MAX];
    size_t i;

    if (!dir[0])
        return;
    for (i = 0; i < sizeof file_names / sizeof file_names[0]; i++) {
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, file_names[i]) < sizeof p)
            unlink(p);
    }
    rmdir(dir);
    dir[0] = 0;
}

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "addcow-bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* A library call's result: dies with the library's message on failure. */
static void lib_check(int ret, const char *what)
{
    if (ret < 0)
        die("%s: %s: %s", what, strerror(-ret), addcow_last_error());
}

/* A -errno result of our own I/O. */
static void io_check(int ret, const char *what)
{
    if (ret < 0)
        die("%s: %s", what, strerror(-ret));
}

static void sys_check(int ret, const char *what)
{
    if (ret < 0)
        die("%s: %s", what, strerror(errno));
}

/* `a/b` into `out`; dies when it does not fit. */
static const char *join(char out[PATH_MAX], const char *a, const char *b)
{
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX)
        die("path too long: %s/%s", a, b);
    return out;
}

/* `dir/name` into `out`. */
static const char *at(char out[PATH_MAX], const char *name)
{
    return join(out, dir, name);
}

static void *buffer(size_t len)
{
    void *p;

    if (posix_memalign(&p, ALIGN, len) != 0)
        die("out of memory (%zu bytes)", len);
    memset(p, 0x5a, len);
    return p;
}

static double clock_seconds(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now(void)
{
    return clock_seconds(CLOCK_MONOTONIC);
}

/* Whole-range pread/pwrite: 0 or -errno (a short transfer is continued, as the library does). */
static int full_pread(int fd, void *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        buf = (char *)buf + n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int full_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        buf = (const char *)buf + n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* ---- random numbers: splitmix64 ---- */

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* ---- cases ---- */

enum kind { RAND_4K, SEQ_1M, ALLOC_4K, ALLOC_1M };

/* What one side of a run does I/O on. */
struct side {
    const char *name; /* "library" or "raw" */
    AddCowImage *img; /* library side */
    int fd;           /* raw side: the image file */
    int backing_fd;   /* raw side of alloc-write-4k */
};

struct worker;
typedef int (*op_fn)(struct worker *w, uint64_t off, size_t len);

struct bench_case {
    const char *name;
    enum kind kind;
    double target; /* the library / raw target; 0 = none */
    op_fn lib, raw;
};

struct worker {
    const struct bench_case *c;
    const struct side *s;
    op_fn op;
    int index, threads;
    uint64_t ops;          /* at most this many operations */
    double run_s;          /* 0, or stop after this long */
    uint64_t rng;          /* offsets of RAND_4K, places in the cluster of ALLOC_4K */
    const uint64_t *order; /* ALLOC_4K: the clusters, in the order they are written */
    unsigned char *buf, *head, *tail;
    pthread_barrier_t *start_line;
    uint64_t done;           /* operations completed */
    double start, end, cpu;  /* elapsed-time clock at start and end; CPU time used */
    int err;                 /* the first failure's -errno */
    char msg[256];           /* the library's message for err */
};

static int lib_read(struct worker *w, uint64_t off, size_t len)
{
    return addcow_pread(w->s->img, off, w->buf, len);
}

static int lib_write(struct worker *w, uint64_t off, size_t len)
{
    return addcow_pwrite(w->s->img, off, w->buf, len);
}

static int raw_read(struct worker *w, uint64_t off, size_t len)
{
    return full_pread(w->s->fd, w->buf, len, off);
}

static int raw_write(struct worker *w, uint64_t off, size_t len)
{
    return full_pwrite(w->s->fd, w->buf, len, off);
}

/* The physical limit of an allocating write inside one cluster: the untouched head and tail
 * from the backing file, then the whole cluster in one pwritev. */
static int raw_alloc(struct worker *w, uint64_t off, size_t len)
{
    uint64_t start = off / CLUSTER * CLUSTER;
    size_t head = (size_t)(off - start), tail = (size_t)(CLUSTER - head - len);
    struct iovec iov[3];
    ssize_t done;
    int n = 0, ret;

    if (head) {
        if ((ret = full_pread(w->s->backing_fd, w->head, head, start)) < 0)
            return ret;
        iov[n++] = (struct iovec){ w->head, head };
    }
    iov[n++] = (struct iovec){ w->buf, len };
    if (tail) {
        if ((ret = full_pread(w->s->backing_fd, w->tail, tail, off + len)) < 0)
            return ret;
        iov[n++] = (struct iovec){ w->tail, tail };
    }
    done = pwritev(w->s->fd, iov, n, (off_t)start);
    if (done < 0)
        return -errno;
    return done == (ssize_t)CLUSTER ? 0 : -EIO; /* short: not on a page cache or O_DIRECT */
}

static const struct bench_case cases[] = {
    { "rand-read-4k", RAND_4K, 0.90, lib_read, raw_read },
    { "rand-write-4k", RAND_4K, 0.90, lib_write, raw_write },
    { "seq-read-1m", SEQ_1M, 0.97, lib_read, raw_read },
    { "seq-write-1m", SEQ_1M, 0.97, lib_write, raw_write },
    { "alloc-write-4k", ALLOC_4K, 0.94, lib_write, raw_alloc },
    { "alloc-write-1m", ALLOC_1M, 0, lib_write, raw_write },
};

static size_t op_len(enum kind k)
{
    return k == RAND_4K || k == ALLOC_4K ? BLOCK : MIB;
}

static bool allocating(enum kind k)
{
    return k == ALLOC_4K || k == ALLOC_1M;
}

/* Operations per thread in a run: the allocating cases' images once, the data cases without
 * end (they stop at their time). */
static uint64_t run_ops(enum kind k, int threads)
{
    switch (k) {
    case RAND_4K:
    case SEQ_1M:
        return UINT64_MAX;
    case ALLOC_4K:
        return cfg.alloc_size / CLUSTER / (uint64_t)threads;
    case ALLOC_1M:
        return cfg.alloc_size / MIB / (uint64_t)threads;
    }
    return 0;
}

/* The offset of thread w's operation i. */
static uint64_t offset_of(struct worker *w, uint64_t i)
{
    switch (w->c->kind) {
    case RAND_4K:
        return next_random(&w->rng) % (cfg.size / BLOCK) * BLOCK;
    case SEQ_1M: {
        uint64_t n = cfg.size / MIB;
        return (n * (uint64_t)w->index / (uint64_t)w->threads + i) % n * MIB;
    }
    case ALLOC_4K:
        return w->order[i * (uint64_t)w->threads + (uint64_t)w->index] * CLUSTER +
               next_random(&w->rng) % (CLUSTER / BLOCK) * BLOCK;
    case ALLOC_1M:
        return (w->ops * (uint64_t)w->index + i) * MIB;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uint64_t check = op_len(w->c->kind) == BLOCK ? 16 : 1; /* look at the clock every ... */
    double cpu0, deadline;
    uint64_t i;

    pthread_barrier_wait(w->start_line);
    w->start = now();
    cpu0 = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    deadline = w->start + w->run_s;
    for (i = 0; i < w->ops; i++) {
        int ret;
        if (w->run_s > 0 && i % check == 0 && now() >= deadline)
            break;
        ret = w->op(w, offset_of(w, i), op_len(w->c->kind));
        if (ret < 0) {
            w->err = ret;
            snprintf(w->msg, sizeof w->msg, "%s", w->s->img ? addcow_last_error() : "");
            break;
        }
    }
    w->done = i;
    w->cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    w->end = now();
    return NULL;
}

/* ---- the files ---- */

static int backing_fd = -1; /* raw side's descriptor of backing.raw */

static void write_pattern(const char *path, uint64_t size)
{
    unsigned char *buf = buffer(MIB);
    uint64_t off, i;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    sys_check(fd, path);
    for (off = 0; off < size; off += MIB) {
        for (i = 0; i < MIB; i += BLOCK)
            memset(buf + i, (int)(((off + i) / BLOCK) % 251), BLOCK);
        io_check(full_pwrite(fd, buf, MIB, off), path);
    }
    sys_check(fsync(fd), path); /* nothing of it left to write back during the rounds */
    close(fd);
    free(buf);
}

/* Creates `meta` over backing.raw with image file `image`, `size` bytes. */
static void create_image(const char *meta, const char *image, uint64_t size)
{
    char p[PATH_MAX];
    AddCowCreateOptions o;

    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.image_file = image;
    o.backing_file = "backing.raw";
    o.size = size;
    lib_check(addcow_create(at(p, meta), &o), "addcow_create");
}

static AddCowImage *open_image(const char *meta, uint32_t flags)
{
    char p[PATH_MAX];
    AddCowImage *img;

    lib_check(addcow_open(at(p, meta), flags, &img), "addcow_open");
    if (addcow_get_cluster_size(img) != (int64_t)CLUSTER)
        die("%s: cluster size %" PRId64 ", the benchmark assumes %" PRIu64, meta,
            addcow_get_cluster_size(img), CLUSTER);
    return img;
}

static int open_raw(const char *name, int flags)
{
    char p[PATH_MAX];
    int fd = open(at(p, name), flags | raw_flags, 0600);

    sys_check(fd, p);
    return fd;
}

/* The data image: data.add-cow over backing.raw, every cluster allocated (written through the
 * library in 1 MiB writes), closed, then read once so that its pages are in the cache. */
static void make_data_image(void)
{
    unsigned char *buf = buffer(MIB);
    AddCowImage *img;
    uint64_t off, pnum;
    int fd;

    create_image("data.add-cow", "data.raw", cfg.size);
    img = open_image("data.add-cow", ADDCOW_OPEN_RDWR);
    for (off = 0; off < cfg.size; off += MIB)
        lib_check(addcow_pwrite(img, off, buf, MIB), "addcow_pwrite (allocating data.raw)");
    for (off = 0; off < cfg.size; off += pnum) {
        int ret = addcow_is_allocated(img, off, cfg.size - off, &pnum);
        lib_check(ret, "addcow_is_allocated");
        if (ret != 1 || pnum == 0)
            die("data image: offset %" PRIu64 " is not allocated", off);
    }
    lib_check(addcow_close(img), "addcow_close (data image)");
    fd = open_raw("data.raw", O_RDONLY);
    for (off = 0; off < cfg.size; off += MIB)
        io_check(full_pread(fd, buf, MIB, off), "reading data.raw");
    close(fd);
    free(buf);
}

/* A fresh, empty image for one allocating run: the library's (its own files) or the raw one. */
static void alloc_setup(struct side *s, bool library)
{
    char p[PATH_MAX];

    if (library) {
        at(p, "alloc-lib.raw");
        unlink(p); /* addcow_create would keep an existing file's content */
        create_image("alloc-lib.add-cow", "alloc-lib.raw", cfg.alloc_size);
        s->img = open_image("alloc-lib.add-cow", lib_flags);
    } else {
        s->fd = open_raw("alloc-raw.raw", O_RDWR | O_CREAT | O_TRUNC);
        sys_check(ftruncate(s->fd, (off_t)cfg.alloc_size), "ftruncate alloc-raw.raw");
        s->backing_fd = backing_fd;
    }
}

/* Drops a run's files; truncated first, so that their dirty pages are dropped, not written. */
static void alloc_teardown(struct side *s, bool library)
{
    char p[PATH_MAX];

    if (library) {
        sys_check(truncate(at(p, "alloc-lib.raw"), 0), p);
        lib_check(addcow_close(s->img), "addcow_close (allocating run)");
        unlink(p);
        unlink(at(p, "alloc-lib.add-cow"));
    } else {
        sys_check(ftruncate(s->fd, 0), "ftruncate alloc-raw.raw");
        close(s->fd);
        unlink(at(p, "alloc-raw.raw"));
    }
}

/* ---- runs and rounds ---- */

struct result {
    double seconds, cpu; /* elapsed; CPU time of the worker threads (user + system) */
    uint64_t ops, bytes;
};

/* One run of `c` on side `s`: `threads` threads, each doing at most `ops` operations and
 * stopping after `run_s` seconds unless that is 0. */
static struct result run(const struct bench_case *c, const struct side *s, bool library,
                         int threads, uint64_t ops, double run_s, const uint64_t *order)
{
    pthread_t tid[MAX_THREADS];
    struct worker w[MAX_THREADS];
    pthread_barrier_t start_line;
    struct result r = { 0, 0, 0, 0 };
    double first = 0, last = 0;
    int i;

    pthread_barrier_init(&start_line, NULL, (unsigned)threads);
    for (i = 0; i < threads; i++) {
        w[i] = (struct worker){
            .c = c,
            .s = s,
            .op = library ? c->lib : c->raw,
            .index = i,
            .threads = threads,
            .ops = ops,
            .run_s = run_s,
            .rng = cfg.seed * 0x100000001b3ULL + (uint64_t)i,
            .order = order,
            .buf = buffer(op_len(c->kind)),
            .head = buffer(CLUSTER),
            .tail = buffer(CLUSTER),
            .start_line = &start_line,
        };
        errno = pthread_create(&tid[i], NULL, worker_main, &w[i]);
        sys_check(errno ? -1 : 0, "pthread_create");
    }
    for (i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&start_line);
    for (i = 0; i < threads; i++) {
        if (w[i].err < 0)
            die("%s, %s side, thread %d: %s%s%s", c->name, s->name, i, strerror(-w[i].err),
                w[i].msg[0] ? ": " : "", w[i].msg);
        first = i == 0 || w[i].start < first ? w[i].start : first;
        last = w[i].end > last ? w[i].end : last;
        r.ops += w[i].done;
        r.cpu += w[i].cpu;
        free(w[i].buf);
        free(w[i].head);
        free(w[i].tail);
    }
    r.seconds = last - first;
    r.bytes = r.ops * op_len(c->kind);
    return r;
}

/* A full run (or a quarter of one: the warm-up), with fresh files around an allocating one. */
static struct result run_side(const struct bench_case *c, struct side *s, bool library,
                              int threads, bool warm_up, const uint64_t *order)
{
    uint64_t ops = run_ops(c->kind, threads);
    double run_s = allocating(c->kind) ? 0 : cfg.run_s;
    struct result r;

    if (warm_up) {
        ops = ops == UINT64_MAX ? ops : (ops + 3) / 4;
        run_s /= 4;
    }
    if (allocating(c->kind))
        alloc_setup(s, library);
    r = run(c, s, library, threads, ops, run_s, order);
    if (allocating(c->kind))
        alloc_teardown(s, library);
    return r;
}

/* The clusters of the allocating image in a random order (Fisher-Yates, fixed seed). */
static uint64_t *cluster_order(void)
{
    uint64_t n = cfg.alloc_size / CLUSTER, i, rng = cfg.seed ^ 0xa110c;
    uint64_t *order = malloc(n * sizeof *order);

    if (!order)
        die("out of memory");
    for (i = 0; i < n; i++)
        order[i] = i;
    for (i = n - 1; i > 0; i--) {
        uint64_t j = next_random(&rng) % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    return order;
}

/* ---- statistics and output ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct stats {
    double median, min, max;
};

static struct stats stats_of(const double *v, int n)
{
    double s[MAX_ROUNDS];
    struct stats st;

    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    st.median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    st.min = s[0];
    st.max = s[n - 1];
    return st;
}

static FILE *csv;
static int missed; /* cases below their target */

static void print_header(void)
{
    printf("%-14s %3s %-5s %9s %9s %6s %-11s %-18s %6s  %-12s %-12s\n", "case", "thr", "unit",
           "raw med", "lib med", "ratio", "target", "round ratios", "cpu", "raw spread",
           "lib spread");
}

/* kIOPS for 4 KiB cases, MiB/s for 1 MiB cases. */
static double rate(const struct bench_case *c, struct result r)
{
    return op_len(c->kind) == BLOCK ? (double)r.ops / r.seconds / 1e3
                                    : (double)r.bytes / r.seconds / (double)MIB;
}

/* "-a/+b%": the min and max of `st` against its median. */
static void spread(char out[32], struct stats st)
{
    snprintf(out, 32, "-%.1f/+%.1f%%", 100 * (1 - st.min / st.median),
             100 * (st.max / st.median - 1));
}

/* One line of the table. ratio: library median / raw median; round ratios: the median and
 * range of the per-round library / raw ratios; cpu: raw / library median CPU time per
 * operation (the worker threads' user + system time, which other processes on the machine
 * disturb less than the elapsed time: a second opinion, not the judged figure). */
static void print_row(const struct bench_case *c, int threads, const struct result *raw,
                      const struct result *lib)
{
    double rv[MAX_ROUNDS], lv[MAX_ROUNDS], ratios[MAX_ROUNDS], rc[MAX_ROUNDS], lc[MAX_ROUNDS];
    struct stats r, l, q;
    char target[32] = "-", rr[32], rs[32], ls[32];
    double ratio;
    int i;

    for (i = 0; i < cfg.rounds; i++) {
        rv[i] = rate(c, raw[i]);
        lv[i] = rate(c, lib[i]);
        ratios[i] = lv[i] / rv[i];
        rc[i] = raw[i].cpu / (double)raw[i].ops;
        lc[i] = lib[i].cpu / (double)lib[i].ops;
    }
    r = stats_of(rv, cfg.rounds);
    l = stats_of(lv, cfg.rounds);
    q = stats_of(ratios, cfg.rounds);
    ratio = l.median / r.median;
    if (c->target > 0) {
        bool ok = ratio >= c->target;
        snprintf(target, sizeof target, ">=%.2f %s", c->target, ok ? "ok" : "MISS");
        missed += !ok;
    }
    snprintf(rr, sizeof rr, "%.3f (%.2f-%.2f)", q.median, q.min, q.max);
    spread(rs, r);
    spread(ls, l);
    printf("%-14s %3d %-5s %9.1f %9.1f %6.3f %-11s %-18s %6.3f  %-12s %-12s\n", c->name,
           threads, op_len(c->kind) == BLOCK ? "kIOPS" : "MiB/s", r.median, l.median, ratio,
           target, rr, stats_of(rc, cfg.rounds).median / stats_of(lc, cfg.rounds).median, rs,
           ls);
    fflush(stdout);
}

static void record(const struct bench_case *c, int threads, const char *side, int round,
                   struct result r)
{
    if (csv)
        fprintf(csv, "%s,%d,%s,%d,%" PRIu64 ",%" PRIu64 ",%.9f,%.9f\n", c->name, threads, side,
                round, r.ops, r.bytes, r.seconds, r.cpu);
}

static void bench_case(const struct bench_case *c, struct side *lib, struct side *raw,
                       int threads, const uint64_t *order)
{
    struct result lr[MAX_ROUNDS], rr[MAX_ROUNDS];
    int round;

    if (run_ops(c->kind, threads) == 0)
        die("%s: no operations at %d threads (--alloc-size too small)", c->name, threads);
    run_side(c, lib, true, threads, true, order); /* warm-up, untimed */
    run_side(c, raw, false, threads, true, order);
    for (round = 0; round < cfg.rounds; round++) {
        if (round % 2 == 0) {
            lr[round] = run_side(c, lib, true, threads, false, order);
            rr[round] = run_side(c, raw, false, threads, false, order);
        } else {
            rr[round] = run_side(c, raw, false, threads, false, order);
            lr[round] = run_side(c, lib, true, threads, false, order);
        }
        record(c, threads, "library", round, lr[round]);
        record(c, threads, "raw", round, rr[round]);
    }
    print_row(c, threads, rr, lr);
}

/* addcow_close of an image with nothing to write back (opened read-write, one read), against
 * close(2) of the raw image file: median and range in microseconds. */
static void bench_close(void)
{
    double lv[MAX_ROUNDS], rv[MAX_ROUNDS];
    unsigned char *buf = buffer(BLOCK);
    struct stats l, r;
    int round;

    for (round = 0; round < cfg.rounds; round++) {
        AddCowImage *img = open_image("data.add-cow", lib_flags);
        int fd = open_raw("data.raw", O_RDWR);
        double t0;

        lib_check(addcow_pread(img, 0, buf, BLOCK), "addcow_pread");
        io_check(full_pread(fd, buf, BLOCK, 0), "pread data.raw");
        t0 = now();
        lib_check(addcow_close(img), "addcow_close (clean image)");
        lv[round] = (now() - t0) * 1e6;
        t0 = now();
        close(fd);
        rv[round] = (now() - t0) * 1e6;
    }
    l = stats_of(lv, cfg.rounds);
    r = stats_of(rv, cfg.rounds);
    printf("%-14s %3d %-5s %9.1f %9.1f  addcow_close of an image with nothing to write back vs "
           "close(2); library %.1f-%.1f us\n",
           "close-clean", 1, "us", r.median, l.median, l.min, l.max);
    free(buf);
}

/* Dies on a name in --cases that is no case. */
static void check_cases(void)
{
    const char *p = cfg.cases;

    while (*p) {
        size_t len = strcspn(p, ","), i;
        bool known = len == strlen("close-clean") && strncmp(p, "close-clean", len) == 0;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
            known |= len == strlen(cases[i].name) && strncmp(p, cases[i].name, len) == 0;
        if (!known)
            die("--cases: no case '%.*s' (see --help)", (int)len, p);
        p += len + (p[len] == ',');
    }
}

static bool selected(const char *name)
{
    const char *p = cfg.cases;
    size_t n = strlen(name);

    if (!p)
        return true;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* ---- the strace check: scripts/bench.sh counts the syncs of --open-close ---- */

/* --prepare-clean DIR: DIR/clean.add-cow (image file clean.raw) over DIR/clean-base.raw with
 * one cluster allocated, closed: an image with nothing to write back. */
static int prepare_clean(const char *where)
{
    char meta[PATH_MAX], base[PATH_MAX];
    unsigned char *buf = buffer(BLOCK);
    AddCowCreateOptions o;
    AddCowImage *img;

    write_pattern(join(base, where, "clean-base.raw"), 4 * CLUSTER);
    join(meta, where, "clean.add-cow");
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.image_file = "clean.raw";
    o.backing_file = "clean-base.raw";
    o.size = 4 * CLUSTER;
    lib_check(addcow_create(meta, &o), "addcow_create");
    lib_check(addcow_open(meta, ADDCOW_OPEN_RDWR, &img), "addcow_open");
    lib_check(addcow_pwrite(img, CLUSTER, buf, BLOCK), "addcow_pwrite");
    lib_check(addcow_close(img), "addcow_close");
    free(buf);
    return 0;
}

/* --open-close FILE: opens FILE read-write, reads 4 KiB, closes. */
static int open_close(const char *meta)
{
    unsigned char *buf = buffer(BLOCK);
    AddCowImage *img;

    lib_check(addcow_open(meta, lib_flags, &img), "addcow_open");
    lib_check(addcow_pread(img, 0, buf, BLOCK), "addcow_pread");
    lib_check(addcow_close(img), "addcow_close");
    free(buf);
    return 0;
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: addcow-bench [OPTIONS]\n"
            "       addcow-bench --prepare-clean DIR | --open-close FILE.add-cow\n"
            "Compares libaddcow (C ABI) with pread/pwrite on the same files in one process.\n"
            "  --dir DIR         where to make the temporary directory (default $TMPDIR or /tmp)\n"
            "  --size MIB        data image size (default 256)\n"
            "  --alloc-size MIB  image of the allocating cases, written once per run (default 256)\n"
            "  --run-ms MS       how long a run of a data case lasts (default 200)\n"
            "  --rounds N        interleaved rounds per case (default 11, at most %d)\n"
            "  --threads LIST    thread counts, e.g. 1,2 (default 1,2)\n"
            "  --cases LIST      case names, comma-separated (default all: rand-read-4k,\n"
            "                    rand-write-4k, seq-read-1m, seq-write-1m, alloc-write-4k,\n"
            "                    alloc-write-1m, close-clean)\n"
            "  --seed N          offsets and cluster order (default 1)\n"
            "  --direct          O_DIRECT (raw) and ADDCOW_OPEN_DIRECT (library)\n"
            "  --csv FILE        one line per run: case,threads,side,round,ops,bytes,seconds,\n"
            "                    cpu_seconds (the worker threads' user + system time)\n"
            "  --prepare-clean DIR, --open-close FILE  for scripts/bench.sh's sync count\n",
            MAX_ROUNDS);
}

static uint64_t number(const char *opt, const char *arg, uint64_t min, uint64_t max)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || v < min || v > max)
        die("%s: '%s' is not a number from %" PRIu64 " to %" PRIu64, opt, arg, min, max);
    return v;
}

static void parse_threads(const char *arg)
{
    const char *p = arg;

    cfg.nthreads = 0;
    while (*p) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len >= sizeof item || cfg.nthreads == MAX_THREADS)
            die("--threads: bad list '%s'", arg);
        memcpy(item, p, len);
        item[len] = 0;
        cfg.threads[cfg.nthreads++] = (int)number("--threads", item, 1, MAX_THREADS);
        p += len + (p[len] == ',');
    }
    if (cfg.nthreads == 0)
        die("--threads: empty list");
}

static void set_direct(void)
{
#ifdef ADDCOW_OPEN_DIRECT
    lib_flags |= ADDCOW_OPEN_DIRECT;
    raw_flags |= O_DIRECT;
    cfg.direct = true;
#else
    die("--direct: not available: this libaddcow's header has no ADDCOW_OPEN_DIRECT");
#endif
}

static void parse(int argc, char **argv)
{
    enum { DIR_, SIZE, ALLOC, RUN_MS, ROUNDS, THREADS, CASES, SEED, DIRECT, CSV, PREP, OC };
    static const struct option opts[] = {
        { "dir", required_argument, NULL, DIR_ },
        { "size", required_argument, NULL, SIZE },
        { "alloc-size", required_argument, NULL, ALLOC },
        { "run-ms", required_argument, NULL, RUN_MS },
        { "rounds", required_argument, NULL, ROUNDS },
        { "threads", required_argument, NULL, THREADS },
        { "cases", required_argument, NULL, CASES },
        { "seed", required_argument, NULL, SEED },
        { "direct", no_argument, NULL, DIRECT },
        { "csv", required_argument, NULL, CSV },
        { "prepare-clean", required_argument, NULL, PREP },
        { "open-close", required_argument, NULL, OC },
        { "help", no_argument, NULL, 'h' },
        { 0, 0, 0, 0 },
    };
    int o;

    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case DIR_: cfg.parent = optarg; break;
        case SIZE: cfg.size = number("--size", optarg, 1, 1 << 20) * MIB; break;
        case ALLOC: cfg.alloc_size = number("--alloc-size", optarg, 1, 1 << 20) * MIB; break;
        case RUN_MS: cfg.run_s = (double)number("--run-ms", optarg, 1, 600000) / 1e3; break;
        case ROUNDS: cfg.rounds = (int)number("--rounds", optarg, 1, MAX_ROUNDS); break;
        case THREADS: parse_threads(optarg); break;
        case CASES: cfg.cases = optarg; break;
        case SEED: cfg.seed = number("--seed", optarg, 0, UINT64_MAX); break;
        case DIRECT: set_direct(); break;
        case CSV: cfg.csv = optarg; break;
        case PREP: exit(prepare_clean(optarg));
        case OC: exit(open_close(optarg));
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        usage(stderr);
        exit(2);
    }
    if (cfg.cases)
        check_cases();
}

static void make_dir(void)
{
    const char *parent = cfg.parent ? cfg.parent : getenv("TMPDIR");

    if (!parent || !*parent)
        parent = "/tmp";
    char tmpl[PATH_MAX];

    join(tmpl, parent, "addcow-bench.XXXXXX");
    if (!mkdtemp(tmpl))
        die("mkdtemp %s: %s", tmpl, strerror(errno));
    memcpy(dir, tmpl, sizeof dir);
    atexit(remove_files);
}

static void print_config(void)
{
    double load = 0;

    getloadavg(&load, 1);
    printf("libaddcow %s (C ABI) vs pread/pwrite on the same files, one process; %s\n",
           addcow_version(),
           cfg.direct ? "O_DIRECT (raw) / ADDCOW_OPEN_DIRECT (library)"
                      : "buffered I/O, page cache warm");
    printf("dir %s; data image %" PRIu64 " MiB, allocating image %" PRIu64
           " MiB, 64 KiB clusters, over a backing file\n",
           dir, cfg.size / MIB, cfg.alloc_size / MIB);
    printf("%d rounds per case (interleaved ABBA, after one warm-up run of each side), seed %" PRIu64
           "; a run: %.0f ms (data cases), the %" PRIu64 " MiB image once (allocating cases)\n",
           cfg.rounds, cfg.seed, cfg.run_s * 1e3, cfg.alloc_size / MIB);
    printf("%ld CPUs online, load average %.2f at start; ratio = library median / raw median "
           "(raw of alloc-write-4k = the physical limit: backing pread + cluster pwritev)\n\n",
           sysconf(_SC_NPROCESSORS_ONLN), load);
}

int main(int argc, char **argv)
{
    struct side lib = { "library", NULL, -1, -1 }, raw = { "raw", NULL, -1, -1 };
    struct side lib_alloc = { "library", NULL, -1, -1 }, raw_alloc = { "raw", NULL, -1, -1 };
    char p[PATH_MAX];
    uint64_t *order;
    size_t i;
    int t;

    parse(argc, argv);
    if (cfg.size < MIB || cfg.alloc_size < MIB)
        die("--size and --alloc-size must be at least 1 MiB");
    make_dir();
    if (cfg.csv) {
        csv = fopen(cfg.csv, "w");
        if (!csv)
            die("%s: %s", cfg.csv, strerror(errno));
        fprintf(csv, "case,threads,side,round,ops,bytes,seconds,cpu_seconds\n");
    }
    print_config();

    write_pattern(at(p, "backing.raw"), cfg.size > cfg.alloc_size ? cfg.size : cfg.alloc_size);
    backing_fd = open_raw("backing.raw", O_RDONLY);
    make_data_image();
    lib.img = open_image("data.add-cow", lib_flags);
    raw.fd = open_raw("data.raw", O_RDWR);
    order = cluster_order();

    print_header();
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct bench_case *c = &cases[i];
        bool alloc = allocating(c->kind);
        if (!selected(c->name))
            continue;
        for (t = 0; t < cfg.nthreads; t++)
            bench_case(c, alloc ? &lib_alloc : &lib, alloc ? &raw_alloc : &raw, cfg.threads[t],
                       order);
    }
    lib_check(addcow_close(lib.img), "addcow_close (data image)");
    close(raw.fd);
    if (selected("close-clean"))
        bench_close();
    if (missed)
        printf("\n%d case(s) below the issue's target (MISS)\n", missed);
    if (csv && fclose(csv) != 0)
        die("%s: %s", cfg.csv, strerror(errno));
    close(backing_fd);
    free(order);
    return 0;
}
