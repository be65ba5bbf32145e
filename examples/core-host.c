/*
 * A host of libaddcow's mapping core (addcow_core_*): a single-threaded event loop with many
 * guest requests in flight, each a small state machine, and no threads. This is the shape of a
 * QEMU block driver, an SPDK bdev or an io_uring server: the core says where guest bytes live
 * and hands out allocation transactions; the host does every data I/O itself, asynchronously,
 * and never blocks.
 *
 * The asynchronous I/O is simulated: submitting an I/O queues it, and the loop completes queued
 * I/Os in a scrambled order (as a disk would), calling the request that submitted it. The
 * files are memory: the image and the backing file are arrays, the .add-cow file is an array
 * behind an AddCowIo table. The core's own I/O (bitmap pages) goes through that table and is
 * synchronous: each callback completes before the core call returns (a coroutine host may
 * yield inside it; this one just copies memory).
 *
 * The order the core's contract asks for (AddCowCore in addcow.h):
 *   read:   addcow_core_map → DATA: read the image file, BACKING: the backing file, ZERO: zeros
 *   write:  addcow_core_begin_write → IN_PLACE: write the image file
 *                                   → ALLOCATE: read head and tail from the backing file, write
 *                                     head + data + tail to the image file, commit (abort if
 *                                     anything failed)
 *                                   → BUSY: wait until addcow_core_generation moves
 *   flush:  addcow_core_writeback_begin → flush image file → addcow_core_writeback_write →
 *           flush .add-cow file → addcow_core_writeback_end(durable)
 * (Writethrough would add: flush the image file before each commit, and the flush sequence
 * after it.)
 *
 *     core-host        runs the workload, checks the result, prints a summary; exit 0 if right
 *
 * Build: meson builds build/core-host (and `meson test` runs it), or by hand:
 *     gcc examples/core-host.c -Iinclude -Lbuild -laddcow -o core-host
 */
#include <addcow.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#define CLUSTER ((uint64_t)65536)
#define IMAGE_SIZE (16 * CLUSTER)
#define BACKING_SIZE (10 * CLUSTER + 5000) /* clusters 11..15 read zeros */
#define MAX_REQUESTS 64
#define MAX_IOS 256

static void *xcalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        perror("core-host: calloc");
        exit(1);
    }
    return p;
}

/* ------------------------------------------------------------------ files */

struct file {
    const char *name;
    uint8_t *data;
    uint64_t len;
};

static struct file image = {"image", NULL, IMAGE_SIZE};
static struct file backing = {"backing", NULL, BACKING_SIZE};
static struct file meta = {".add-cow", NULL, 0};

/* The .add-cow file's callbacks for the core: plain copies, done before they return. */
static int meta_preadv(void *opaque, uint64_t off, const struct iovec *iov, int iovcnt)
{
    struct file *f = opaque;
    for (int i = 0; i < iovcnt; off += iov[i].iov_len, i++)
        memcpy(iov[i].iov_base, f->data + off, iov[i].iov_len); /* never past the end */
    return 0;
}

static int meta_pwritev(void *opaque, uint64_t off, const struct iovec *iov, int iovcnt)
{
    struct file *f = opaque;
    for (int i = 0; i < iovcnt; off += iov[i].iov_len, i++)
        memcpy(f->data + off, iov[i].iov_base, iov[i].iov_len); /* bitmap: inside the file */
    return 0;
}

static int64_t meta_get_length(void *opaque)
{
    return (int64_t)((struct file *)opaque)->len;
}

/* A layout-1 .add-cow file for IMAGE_SIZE bytes, every cluster unallocated. */
static void make_meta(void)
{
    meta.len = 2560 + (IMAGE_SIZE / CLUSTER + 7) / 8;
    meta.data = xcalloc(meta.len);
    memcpy(meta.data, "ADD_COW\xff\0\0\0\1", 12);
    memcpy(meta.data + 12, "backing.raw", 11);
    memcpy(meta.data + 1036, "image.raw", 9);
}

/* ------------------------------------------------------------------ simulated async I/O */

struct request;

enum io_op { IO_READ, IO_WRITE, IO_FLUSH };

struct io {
    enum io_op op;
    struct file *file;
    uint64_t offset;
    struct iovec iov[5];
    int iovcnt;
    struct request *req; /* called back on completion */
};

static struct io *pending[MAX_IOS];
static int npending;
static uint64_t ios_completed;
static uint32_t rng = 12345;

static struct io *submit(enum io_op op, struct file *f, uint64_t offset, struct request *r)
{
    struct io *io = xcalloc(sizeof *io);
    io->op = op;
    io->file = f;
    io->offset = offset;
    io->req = r;
    if (npending == MAX_IOS) {
        fprintf(stderr, "core-host: too many I/Os in flight\n");
        exit(1);
    }
    pending[npending++] = io;
    return io;
}

static void add_iov(struct io *io, void *base, uint64_t len)
{
    if (len > 0)
        io->iov[io->iovcnt++] = (struct iovec){base, (size_t)len};
}

static void io_done(struct request *r, int ret);

/* Completes one queued I/O, picked at random: completions arrive out of order. */
static void complete_one(void)
{
    rng = rng * 1103515245 + 12345;
    int i = (int)((rng >> 16) % (uint32_t)npending);
    struct io *io = pending[i];
    pending[i] = pending[--npending];
    uint64_t off = io->offset;
    for (int k = 0; k < io->iovcnt; off += io->iov[k].iov_len, k++) {
        if (io->op == IO_READ)
            memcpy(io->iov[k].iov_base, io->file->data + off, io->iov[k].iov_len);
        else
            memcpy(io->file->data + off, io->iov[k].iov_base, io->iov[k].iov_len);
    }
    ios_completed++;
    struct request *r = io->req;
    free(io);
    io_done(r, 0); /* a real host passes the I/O's result; here none fails */
}

/* ------------------------------------------------------------------ requests */

static AddCowCore *core;
static uint8_t *zeros; /* one cluster of zeros, for heads and tails */

enum kind { READ, WRITE, FLUSH };

enum state {
    START,       /* (re)start: ask the core for the next step */
    READING,     /* read: a DATA or BACKING run in flight */
    IN_PLACE,    /* write: an in-place write in flight */
    COPYING,     /* write: head and tail reads from the backing file in flight */
    ALLOCATING,  /* write: head + data + tail write in flight */
    FLUSH_IMAGE, /* flush: image file flush in flight */
    FLUSH_META,  /* flush: .add-cow flush in flight */
    BUSY,        /* parked until the core's generation moves */
    DONE,
};

struct request {
    enum kind kind;
    enum state state;
    uint64_t offset, len, pos; /* guest range; pos: bytes done */
    uint8_t *buf;              /* guest buffer */
    uint64_t run;              /* bytes of the step in flight */
    int ios;                   /* I/Os in flight */
    int error;                 /* first I/O error of the step */
    uint64_t wait_gen;         /* BUSY: the generation to wait past */
    AddCowWriteStep step;      /* write: the current step */
    uint8_t *bounce;           /* write: head and tail bytes from the backing file */
    AddCowWriteBack *wb;       /* flush: the write-back */
    int result;
};

static struct request *requests[MAX_REQUESTS];
static int nrequests, ndone;
static uint64_t busy_waits;

static void advance(struct request *r);

static void finish(struct request *r, int result)
{
    r->state = DONE;
    r->result = result;
    ndone++;
    if (result < 0)
        fprintf(stderr, "core-host: request at %" PRIu64 " failed: %s: %s\n", r->offset,
                strerror(-result), addcow_last_error());
}

static void park(struct request *r, uint64_t generation)
{
    r->state = BUSY;
    r->wait_gen = generation;
    busy_waits++;
}

/* After every commit, abort and write-back end (all of them are ours): the generation moved,
 * so every parked request runs again. */
static void wake_waiters(void)
{
    uint64_t g = addcow_core_generation(core);
    for (int i = 0; i < nrequests; i++) {
        struct request *r = requests[i];
        if (r->state == BUSY && r->wait_gen != g) {
            r->state = START;
            advance(r);
        }
    }
}

/* read: one run per step, as the map says. */
static void read_step(struct request *r)
{
    while (r->pos < r->len) {
        uint64_t at = r->offset + r->pos, n;
        int kind = addcow_core_map(core, at, r->len - r->pos, &n);
        if (kind < 0) {
            finish(r, kind);
            return;
        }
        if (kind == ADDCOW_MAP_ZERO) {
            memset(r->buf + r->pos, 0, n);
            r->pos += n;
            continue;
        }
        struct file *f = kind == ADDCOW_MAP_DATA ? &image : &backing;
        add_iov(submit(IO_READ, f, at, r), r->buf + r->pos, n);
        r->run = n;
        r->ios = 1;
        r->state = READING;
        return;
    }
    finish(r, 0);
}

/* The cluster write of an allocation: head (backing bytes, zeros), data, tail (likewise). */
static void write_cluster(struct request *r)
{
    AddCowWriteStep *s = &r->step;
    struct io *io = submit(IO_WRITE, &image, s->cluster_start, r);
    add_iov(io, r->bounce, s->head_backing);
    add_iov(io, zeros, s->head_zero);
    add_iov(io, r->buf + r->pos, s->len);
    add_iov(io, r->bounce + s->head_backing, s->tail_backing);
    add_iov(io, zeros, s->tail_zero);
    r->ios = 1;
    r->state = ALLOCATING;
}

/* An allocation: read the head and tail from the backing file (both at once; either may be
 * empty), then write the cluster range. */
static void allocate(struct request *r)
{
    AddCowWriteStep *s = &r->step;
    r->bounce = xcalloc(s->head_backing + s->tail_backing);
    r->ios = 0;
    r->state = COPYING;
    if (s->head_backing > 0) {
        add_iov(submit(IO_READ, &backing, s->cluster_start, r), r->bounce, s->head_backing);
        r->ios++;
    }
    if (s->tail_backing > 0) {
        uint64_t tail = r->offset + r->pos + s->len;
        add_iov(submit(IO_READ, &backing, tail, r), r->bounce + s->head_backing,
                s->tail_backing);
        r->ios++;
    }
    if (r->ios == 0)
        write_cluster(r);
}

/* write: in place, or an allocation transaction, or park on busy. */
static void write_step(struct request *r)
{
    if (r->pos == r->len) {
        finish(r, 0);
        return;
    }
    AddCowWriteStep *s = &r->step;
    s->struct_size = sizeof *s;
    uint64_t at = r->offset + r->pos;
    int rc = addcow_core_begin_write(core, at, r->len - r->pos, s);
    if (rc < 0) {
        finish(r, rc);
        return;
    }
    r->run = s->len;
    r->error = 0;
    if (s->kind == ADDCOW_STEP_BUSY) {
        park(r, s->generation);
    } else if (s->kind == ADDCOW_STEP_IN_PLACE) {
        add_iov(submit(IO_WRITE, &image, at, r), r->buf + r->pos, s->len);
        r->ios = 1;
        r->state = IN_PLACE;
    } else {
        allocate(r);
    }
}

/* The allocation's image write completed (or it or a backing read failed): commit (or
 * abort), then wake the waiters: the generation moved. */
static void end_allocation(struct request *r)
{
    free(r->bounce);
    r->bounce = NULL;
    int rc = r->error ? addcow_core_abort(core, r->step.txn)
                      : addcow_core_commit(core, r->step.txn);
    wake_waiters();
    if (r->error || rc < 0) {
        finish(r, r->error ? r->error : rc);
        return;
    }
    r->pos += r->run;
    r->state = START;
    advance(r);
}

/* flush: writeback_begin → flush image → writeback_write → flush .add-cow → writeback_end. */
static void flush_step(struct request *r)
{
    uint64_t g;
    int rc;
    switch (r->state) {
    case START:
        rc = addcow_core_writeback_begin(core, &r->wb, &g);
        if (rc == ADDCOW_BUSY) {
            park(r, g);
        } else if (rc < 0) {
            finish(r, rc);
        } else {
            submit(IO_FLUSH, &image, 0, r);
            r->ios = 1;
            r->state = FLUSH_IMAGE;
        }
        break;
    case FLUSH_IMAGE:
        rc = r->error ? r->error : addcow_core_writeback_write(core, r->wb);
        if (rc < 0) {
            addcow_core_writeback_end(core, r->wb, 0); /* the pages stay dirty */
            wake_waiters();
            finish(r, rc);
        } else {
            submit(IO_FLUSH, &meta, 0, r);
            r->ios = 1;
            r->state = FLUSH_META;
        }
        break;
    case FLUSH_META:
        addcow_core_writeback_end(core, r->wb, r->error == 0);
        wake_waiters();
        finish(r, r->error);
        break;
    default:
        break;
    }
}

static void advance(struct request *r)
{
    if (r->kind == READ)
        read_step(r);
    else if (r->kind == WRITE)
        write_step(r);
    else
        flush_step(r);
}

/* An I/O of `r` completed with `ret`; when its last one is in, the step goes on. */
static void io_done(struct request *r, int ret)
{
    if (ret < 0 && r->error == 0)
        r->error = ret;
    if (--r->ios > 0)
        return;
    switch (r->state) {
    case READING:
    case IN_PLACE:
        if (r->error) {
            finish(r, r->error);
        } else {
            r->pos += r->run;
            r->state = START;
            advance(r);
        }
        break;
    case COPYING:
        if (r->error)
            end_allocation(r); /* aborts */
        else
            write_cluster(r);
        break;
    case ALLOCATING:
        end_allocation(r);
        break;
    default:
        flush_step(r);
        break;
    }
}

static struct request *start(enum kind kind, uint64_t offset, uint64_t len, uint8_t *buf)
{
    struct request *r = xcalloc(sizeof *r);
    *r = (struct request){.kind = kind, .state = START, .offset = offset, .len = len, .buf = buf};
    requests[nrequests++] = r;
    advance(r);
    return r;
}

/* Runs until every request is done: completions drive the state machines. */
static int run_loop(void)
{
    while (ndone < nrequests) {
        if (npending == 0) {
            fprintf(stderr, "core-host: requests wait but no I/O is in flight\n");
            return -1;
        }
        complete_one();
    }
    int bad = 0;
    for (int i = 0; i < nrequests; i++) {
        bad |= requests[i]->result < 0;
        free(requests[i]);
    }
    nrequests = ndone = 0;
    return bad ? -1 : 0;
}

/* ------------------------------------------------------------------ the workload */

static uint8_t *model;    /* what the image must read */
static int written[16];   /* clusters some write touched */

static void guest_write(uint64_t offset, uint64_t len, uint8_t *data, uint8_t seed)
{
    for (uint64_t i = 0; i < len; i++)
        data[i] = (uint8_t)(seed + i % 251);
    memcpy(model + offset, data, len);
    for (uint64_t c = offset / CLUSTER; c <= (offset + len - 1) / CLUSTER; c++)
        written[c] = 1;
    start(WRITE, offset, len, data);
}

int main(void)
{
    make_meta();
    image.data = xcalloc(IMAGE_SIZE);
    backing.data = xcalloc(BACKING_SIZE);
    for (uint64_t i = 0; i < BACKING_SIZE; i++)
        backing.data[i] = (uint8_t)(i % 253 + 1);
    zeros = xcalloc(CLUSTER);
    model = xcalloc(IMAGE_SIZE);
    memcpy(model, backing.data, BACKING_SIZE);

    AddCowIo io = {&meta, meta_preadv, meta_pwritev, NULL, meta_get_length, NULL};
    AddCowOpenOptions opts = {sizeof opts, ADDCOW_OPEN_RDWR, 0};
    int rc = addcow_core_open(&io, IMAGE_SIZE, &opts, &core);
    if (rc < 0) {
        fprintf(stderr, "core-host: addcow_core_open: %s\n", addcow_last_error());
        return 1;
    }
    addcow_core_set_backing_length(core, BACKING_SIZE);

    /* 1. Everything at once: four writes into each of clusters 0-7 and 12-13 (different bytes
     * of the same clusters: all but one per cluster start busy; a slot-3 write runs into the
     * next cluster), reads of untouched clusters, and three flushes among them. */
    static uint8_t data[40][14000];
    uint8_t *readback = xcalloc(IMAGE_SIZE);
    int n = 0;
    for (int slot = 0; slot < 4; slot++) {
        for (uint64_t c = 0; c < 10; c++) {
            uint64_t cl = c < 8 ? c : c + 4;
            uint64_t len = slot == 3 ? 14000 : 6000;
            guest_write(cl * CLUSTER + (uint64_t)slot * 16384 + 4000, len, data[n], (uint8_t)n);
            n++;
        }
        uint64_t at = (9 + (uint64_t)slot % 2) * CLUSTER;
        start(READ, at, CLUSTER, readback + at);
        if (slot < 3)
            start(FLUSH, 0, 0, NULL);
    }
    start(READ, 15 * CLUSTER, CLUSTER, readback + 15 * CLUSTER);
    uint64_t busy_first = busy_waits;
    if (run_loop() < 0)
        return 1;
    if (memcmp(readback + 9 * CLUSTER, model + 9 * CLUSTER, 2 * CLUSTER) != 0 ||
        memcmp(readback + 15 * CLUSTER, model + 15 * CLUSTER, CLUSTER) != 0) {
        fprintf(stderr, "core-host: reads beside the writes read wrong bytes\n");
        return 1;
    }

    /* 2. The whole image back, sixteen reads at once, against the model. */
    for (uint64_t c = 0; c < 16; c++)
        start(READ, c * CLUSTER, CLUSTER, readback + c * CLUSTER);
    if (run_loop() < 0)
        return 1;
    if (memcmp(readback, model, IMAGE_SIZE) != 0) {
        fprintf(stderr, "core-host: the image does not read what was written\n");
        return 1;
    }

    /* 3. A last flush, then a fresh core over the .add-cow bytes: exactly the written clusters
     * are allocated. */
    start(FLUSH, 0, 0, NULL);
    if (run_loop() < 0 || addcow_core_close(core) < 0)
        return 1;
    AddCowCore *fresh;
    if (addcow_core_open(&io, IMAGE_SIZE, NULL, &fresh) < 0)
        return 1;
    int allocated = 0;
    for (uint64_t c = 0; c < 16; c++) {
        uint64_t pnum;
        int kind = addcow_core_map(fresh, c * CLUSTER, CLUSTER, &pnum);
        if ((kind == ADDCOW_MAP_DATA) != written[c]) {
            fprintf(stderr, "core-host: cluster %" PRIu64 " maps as %d after reopen\n", c, kind);
            return 1;
        }
        allocated += kind == ADDCOW_MAP_DATA;
    }
    addcow_core_close(fresh);

    printf("core-host: %d writes, %" PRIu64 " I/Os completed out of order, parked busy %" PRIu64
           " times (%" PRIu64 " at submission); image verified, %d clusters allocated after "
           "reopen\n",
           n, ios_completed, busy_waits, busy_first, allocated);
    free(readback);
    free(model);
    free(zeros);
    free(image.data);
    free(backing.data);
    free(meta.data);
    return 0;
}
