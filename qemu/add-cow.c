/*
 * Block driver for the add-cow image format, over libaddcow's mapping core
 *
 * Copyright (c) 2026 The libaddcow authors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * An add-cow image is a small metadata file (bs->file) that names a raw image
 * file (the "data-file" child, role DATA, cluster for cluster the guest disk)
 * and a backing file (QEMU's backing child), with one bit per cluster: 0 =
 * read the backing file, 1 = read the image file.  libaddcow owns the format
 * (header, bitmap, allocation transactions) through its mapping core
 * (addcow_core_*, see libaddcow's include/addcow.h at AddCowCore), which does
 * no data I/O and never blocks: this driver calls it directly from its
 * coroutines and does every data I/O itself on the children.  The core reads
 * and writes the bitmap through host callbacks on bs->file; they may yield,
 * since the library holds no lock across them.
 *
 * Locking: s->lock (a CoRwlock) is taken shared by every request that uses
 * s->core and exclusively by truncate and invalidate_cache, which replace the
 * core.  A write whose clusters another allocation holds waits on
 * s->busy_queue until the core's generation moves (every commit, abort and
 * write-back end here restarts the queue; s->busy_mutex orders the check
 * against the restart).
 *
 * Durability order (the core's contract): an allocating write writes the
 * whole cluster range of the image file, then commits the bits; a flush
 * copies the dirty bitmap pages, flushes the image file, writes the pages to
 * bs->file, flushes bs->file, and only then marks the pages clean.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/memalign.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/coroutine.h"
#include "block/block-io.h"
#include "block/block_int.h"
#include "block/qdict.h"
#include "qobject/qdict.h"

#include <addcow.h>

#define ADDCOW_OPT_IMAGE_FILE "image_file"
#define ADDCOW_OPT_LAYOUT     "layout"

typedef struct BDRVAddCowState {
    AddCowCore *core;
    CoRwlock lock;
    QemuMutex busy_mutex;
    CoQueue busy_queue;
    BdrvChild *data_file;
    int64_t backing_len;        /* what the core was last told: -1 = none */
    BlockDriverState *backing_bs;
    uint32_t layout;
} BDRVAddCowState;

/* ------------------------------------------------------------ host I/O */

/*
 * libaddcow's AddCowIo over a BdrvChild.  In a coroutine (every request)
 * they call the coroutine I/O functions directly; outside one (open, close)
 * the polling wrappers.
 */

static int add_cow_io_preadv(void *opaque, uint64_t offset,
                            const struct iovec *iov, int iovcnt)
{
    BdrvChild *child = opaque;
    QEMUIOVector qiov;
    int i, ret;

    if (qemu_in_coroutine()) {
        qemu_iovec_init_external(&qiov, (struct iovec *)iov, iovcnt);
        assume_graph_lock(); /* our callers are GRAPH_RDLOCK coroutines */
        return bdrv_co_preadv(child, offset, qiov.size, &qiov, 0);
    }
    for (i = 0; i < iovcnt; i++) {
        ret = bdrv_pread(child, offset, iov[i].iov_len, iov[i].iov_base, 0);
        if (ret < 0) {
            return ret;
        }
        offset += iov[i].iov_len;
    }
    return 0;
}

static int add_cow_io_pwritev(void *opaque, uint64_t offset,
                             const struct iovec *iov, int iovcnt)
{
    BdrvChild *child = opaque;
    QEMUIOVector qiov;
    int i, ret;

    if (qemu_in_coroutine()) {
        qemu_iovec_init_external(&qiov, (struct iovec *)iov, iovcnt);
        assume_graph_lock();
        return bdrv_co_pwritev(child, offset, qiov.size, &qiov, 0);
    }
    for (i = 0; i < iovcnt; i++) {
        ret = bdrv_pwrite(child, offset, iov[i].iov_len, iov[i].iov_base, 0);
        if (ret < 0) {
            return ret;
        }
        offset += iov[i].iov_len;
    }
    return 0;
}

static int add_cow_io_flush(void *opaque)
{
    BdrvChild *child = opaque;

    return bdrv_flush(child->bs);
}

static int64_t add_cow_io_get_length(void *opaque)
{
    BdrvChild *child = opaque;

    return bdrv_getlength(child->bs);
}

static int add_cow_io_truncate(void *opaque, uint64_t size)
{
    BdrvChild *child = opaque;

    return bdrv_truncate(child, size, false, PREALLOC_MODE_OFF, 0, NULL);
}

static AddCowIo add_cow_io_of(BdrvChild *child)
{
    return (AddCowIo) {
        .opaque = child,
        .preadv = add_cow_io_preadv,
        .pwritev = add_cow_io_pwritev,
        .flush = add_cow_io_flush,
        .get_length = add_cow_io_get_length,
        .truncate = add_cow_io_truncate,
    };
}

/* ---------------------------------------------------------------- core */

static int add_cow_open_core(BlockDriverState *bs, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowIo meta = add_cow_io_of(bs->file);
    AddCowOpenOptions opts = {
        .struct_size = sizeof(opts),
        .flags = ADDCOW_OPEN_RDWR, /* QEMU's permissions refuse writes */
    };
    int64_t size;
    int ret;

    size = bdrv_getlength(s->data_file->bs);
    if (size < 0) {
        error_setg_errno(errp, -size, "Could not get the image file's length");
        return size;
    }
    ret = addcow_core_open(&meta, size, &opts, &s->core);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not open add-cow image: %s",
                         addcow_last_error());
        return ret;
    }
    s->backing_len = -1;
    s->backing_bs = NULL;
    return 0;
}

static void add_cow_close_core(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    if (s->core) {
        int ret = addcow_core_close(s->core);
        if (ret < 0) {
            error_report("add-cow: closing the mapping core: %s",
                         addcow_last_error());
        }
        s->core = NULL;
    }
}

/*
 * Tells the core the backing child's length when the child or its length
 * changed since the last request (it is attached after open, and replaced
 * by stream, commit and change-backing-file).
 */
static int coroutine_fn GRAPH_RDLOCK add_cow_sync_backing(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    BlockDriverState *backing = bs->backing ? bs->backing->bs : NULL;
    int64_t len = -1;

    if (backing) {
        len = bdrv_co_getlength(backing);
        if (len < 0) {
            return len;
        }
    }
    if (backing != s->backing_bs || len != s->backing_len) {
        int ret = addcow_core_set_backing_length(s->core, len);
        if (ret < 0) {
            return ret;
        }
        s->backing_bs = backing;
        s->backing_len = len;
    }
    return 0;
}

/* Waits until the core's generation is no longer @generation. */
static void coroutine_fn add_cow_wait_generation(BDRVAddCowState *s,
                                                uint64_t generation)
{
    qemu_mutex_lock(&s->busy_mutex);
    while (addcow_core_generation(s->core) == generation) {
        qemu_co_queue_wait(&s->busy_queue, &s->busy_mutex);
    }
    qemu_mutex_unlock(&s->busy_mutex);
}

/* After a commit, abort or write-back end: the generation moved. */
static void add_cow_wake_waiters(BDRVAddCowState *s)
{
    qemu_mutex_lock(&s->busy_mutex);
    qemu_co_queue_restart_all(&s->busy_queue);
    qemu_mutex_unlock(&s->busy_mutex);
}

/* -------------------------------------------------------- open / close */

static int add_cow_open_data_file(BlockDriverState *bs, QDict *options,
                                 AddCowHeader *h, Error **errp)
{
    ERRP_GUARD();
    BDRVAddCowState *s = bs->opaque;
    g_autofree char *path = NULL;

    s->data_file = bdrv_open_child(NULL, options, "data-file", bs,
                                   &child_of_bds, BDRV_CHILD_DATA, true, errp);
    if (*errp) {
        return -EINVAL;
    }
    if (!s->data_file) {
        /* Relative names are relative to the .add-cow file's directory. */
        const char *name = addcow_header_image_file(h);

        if (path_is_absolute(name)) {
            path = g_strdup(name);
        } else {
            g_autofree char *dir = bdrv_dirname(bs->file->bs, errp);
            if (!dir) {
                return -EINVAL;
            }
            path = g_strconcat(dir, name, NULL);
        }
        s->data_file = bdrv_open_child(path, options, "data-file", bs,
                                       &child_of_bds, BDRV_CHILD_DATA, false,
                                       errp);
        if (!s->data_file) {
            return -EINVAL;
        }
    }
    return 0;
}

/* The backing file's name and format as the header records them. */
static void add_cow_set_backing_name(BlockDriverState *bs, AddCowHeader *h)
{
    const char *name = addcow_header_backing_file(h);
    const char *fmt = addcow_header_backing_format(h);

    pstrcpy(bs->backing_file, sizeof(bs->backing_file), name ? name : "");
    pstrcpy(bs->auto_backing_file, sizeof(bs->auto_backing_file),
            bs->backing_file);
    /* Layout 1 records no format: the block layer probes it. */
    pstrcpy(bs->backing_format, sizeof(bs->backing_format), fmt ? fmt : "");
}

static int add_cow_open(BlockDriverState *bs, QDict *options, int flags,
                       Error **errp)
{
    ERRP_GUARD();
    BDRVAddCowState *s = bs->opaque;
    AddCowHeader *h = NULL;
    AddCowIo meta;
    int ret;

    ret = bdrv_open_file_child(NULL, options, "file", bs, errp);
    if (ret < 0) {
        return ret;
    }
    qemu_co_rwlock_init(&s->lock);
    qemu_mutex_init(&s->busy_mutex);
    qemu_co_queue_init(&s->busy_queue);

    meta = add_cow_io_of(bs->file);
    ret = addcow_header_read_io(&meta, &h);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read add-cow header: %s",
                         addcow_last_error());
        goto fail;
    }
    s->layout = addcow_header_layout(h);

    ret = add_cow_open_data_file(bs, options, h, errp);
    if (ret < 0) {
        goto fail;
    }
    /* The metadata file holds no guest data. */
    bdrv_graph_rdlock_main_loop();
    bs->file->role &= ~BDRV_CHILD_DATA;
    bdrv_child_refresh_perms(bs, bs->file, &error_abort);
    bdrv_graph_rdunlock_main_loop();

    add_cow_set_backing_name(bs, h);
    bs->supported_truncate_flags = BDRV_REQ_ZERO_WRITE;
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    ret = add_cow_open_core(bs, errp);
    if (ret < 0) {
        goto fail;
    }
    addcow_header_free(h);
    return 0;

fail:
    addcow_header_free(h);
    qemu_mutex_destroy(&s->busy_mutex);
    return ret;
}

static void GRAPH_UNLOCKED add_cow_close(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    /* bdrv_close() flushed: the core has nothing left to write back. */
    add_cow_close_core(bs);
    qemu_mutex_destroy(&s->busy_mutex);
    s->data_file = NULL; /* bdrv_close() unrefs every child */
}

static int add_cow_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    int score = addcow_probe(buf, buf_size > 0 ? buf_size : 0, filename);

    return score > 0 ? score : 0;
}

static void add_cow_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t cluster = addcow_core_get_cluster_size(s->core);

    bs->bl.pwrite_zeroes_alignment = cluster;
    bs->bl.pdiscard_alignment = cluster;
}

static int add_cow_reopen_prepare(BDRVReopenState *state,
                                 BlockReopenQueue *queue, Error **errp)
{
    /* Going read-only: write the bitmap back while we still may. */
    if (!(state->flags & BDRV_O_RDWR) &&
        (state->bs->open_flags & BDRV_O_RDWR)) {
        int ret = bdrv_flush(state->bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not flush add-cow image");
            return ret;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- reads */

static int coroutine_fn GRAPH_RDLOCK
add_cow_do_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                 QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVAddCowState *s = bs->opaque;
    bool synced = false;
    int ret = 0;

    while (bytes > 0) {
        uint64_t pnum = 0;

        ret = addcow_core_map(s->core, offset, bytes, &pnum);
        if (ret > 0 && ret != ADDCOW_MAP_DATA && !synced) {
            /* Backing or zeros depends on the backing length: check it once. */
            synced = true;
            ret = add_cow_sync_backing(bs);
            if (ret >= 0) {
                continue;
            }
        }
        if (ret < 0) {
            break;
        }
        if (pnum == 0) { /* past the end: the block layer zero-fills */
            qemu_iovec_memset(qiov, qiov_offset, 0, bytes);
            break;
        }
        switch (ret) {
        case ADDCOW_MAP_DATA:
            BLKDBG_CO_EVENT(bs->file, BLKDBG_READ_AIO);
            ret = bdrv_co_preadv_part(s->data_file, offset, pnum, qiov,
                                      qiov_offset, 0);
            break;
        case ADDCOW_MAP_BACKING:
            ret = bdrv_co_preadv_part(bs->backing, offset, pnum, qiov,
                                      qiov_offset, 0);
            break;
        default:
            qemu_iovec_memset(qiov, qiov_offset, 0, pnum);
            break;
        }
        offset += pnum;
        bytes -= pnum;
        qiov_offset += pnum;
    }
    return ret < 0 ? ret : 0;
}

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_preadv_part(BlockDriverState *bs, int64_t offset, int64_t bytes,
                      QEMUIOVector *qiov, size_t qiov_offset,
                      BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = add_cow_do_preadv(bs, offset, bytes, qiov, qiov_offset);
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* ------------------------------------------------------------- writes */

/*
 * The parts of an allocation around the guest data, into @buf, which spans
 * the cluster range (the guest's bytes in it are scratch): the head's
 * @head_backing bytes from the backing file and zeros, the tail's
 * @tail_backing bytes and zeros.  Head and tail come in one backing read
 * when no zeros separate them (qcow2's COW does the same).
 */
static int coroutine_fn GRAPH_RDLOCK
add_cow_fill_cow(BlockDriverState *bs, const AddCowWriteStep *st,
                 uint64_t offset, uint8_t *buf)
{
    uint64_t head = offset - st->cluster_start;
    uint64_t tail_at = head + st->len;
    int ret = 0;

    if (st->head_backing && !st->head_zero && st->tail_backing) {
        ret = bdrv_co_pread(bs->backing, st->cluster_start,
                            tail_at + st->tail_backing, buf, 0);
    } else {
        if (st->head_backing) {
            ret = bdrv_co_pread(bs->backing, st->cluster_start,
                                st->head_backing, buf, 0);
        }
        if (ret >= 0 && st->tail_backing) {
            ret = bdrv_co_pread(bs->backing, offset + st->len,
                                st->tail_backing, buf + tail_at, 0);
        }
    }
    memset(buf + st->head_backing, 0, st->head_zero);
    memset(buf + tail_at + st->tail_backing, 0, st->tail_zero);
    return ret;
}

/*
 * ADDCOW_STEP_ALLOCATE: writes head + guest data + tail to the image file
 * in one request, then commits (aborts on failure).
 */
static int coroutine_fn GRAPH_RDLOCK
add_cow_allocate(BlockDriverState *bs, const AddCowWriteStep *st,
                 uint64_t offset, QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t head = offset - st->cluster_start;
    uint64_t range = st->cluster_end - st->cluster_start;
    uint64_t tail = range - head - st->len;
    uint8_t *buf = NULL;
    QEMUIOVector local;
    int ret = 0;

    qemu_iovec_init(&local, qiov->niov + 2);
    if (head || tail) {
        buf = qemu_blockalign(bs, range);
        ret = add_cow_fill_cow(bs, st, offset, buf);
    }
    if (ret >= 0) {
        if (head) {
            qemu_iovec_add(&local, buf, head);
        }
        qemu_iovec_concat(&local, qiov, qiov_offset, st->len);
        if (tail) {
            qemu_iovec_add(&local, buf + head + st->len, tail);
        }
        ret = bdrv_co_pwritev(s->data_file, st->cluster_start, range,
                              &local, 0);
    }
    if (ret < 0) {
        addcow_core_abort(s->core, st->txn);
    } else {
        ret = addcow_core_commit(s->core, st->txn);
    }
    add_cow_wake_waiters(s);
    qemu_vfree(buf);
    qemu_iovec_destroy(&local);
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK
add_cow_do_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                  QEMUIOVector *qiov, size_t qiov_offset)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    ret = add_cow_sync_backing(bs);
    while (ret >= 0 && bytes > 0) {
        AddCowWriteStep st = { .struct_size = sizeof(st) };

        ret = addcow_core_begin_write(s->core, offset, bytes, &st);
        if (ret < 0) {
            break;
        }
        switch (st.kind) {
        case ADDCOW_STEP_BUSY:
            add_cow_wait_generation(s, st.generation);
            continue;
        }
        /* As qcow2 with a data file: blkdebug rules on bs->file see it. */
        BLKDBG_CO_EVENT(bs->file, BLKDBG_WRITE_AIO);
        switch (st.kind) {
        case ADDCOW_STEP_IN_PLACE:
            ret = bdrv_co_pwritev_part(s->data_file, offset, st.len, qiov,
                                       qiov_offset, 0);
            break;
        default:
            ret = add_cow_allocate(bs, &st, offset, qiov, qiov_offset);
            break;
        }
        offset += st.len;
        bytes -= st.len;
        qiov_offset += st.len;
    }
    return ret < 0 ? ret : 0;
}

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_pwritev_part(BlockDriverState *bs, int64_t offset, int64_t bytes,
                       QEMUIOVector *qiov, size_t qiov_offset,
                       BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = add_cow_do_pwritev(bs, offset, bytes, qiov, qiov_offset);
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* ------------------------------------------------- zeroes and discard */

/*
 * Whole clusters read zeros afterwards, never backing data: the core's
 * zeroing steps, each made to read zeros on the image file with
 * @zero_flags.  Parts of clusters are -ENOTSUP: the block layer writes
 * zeros there (a write, with copy-on-write).
 */
static int coroutine_fn GRAPH_RDLOCK
add_cow_do_zero(BlockDriverState *bs, int64_t offset, int64_t bytes,
                BdrvRequestFlags zero_flags)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t cluster = addcow_core_get_cluster_size(s->core);
    int64_t size = addcow_core_get_length(s->core);
    int ret = 0;

    if (!QEMU_IS_ALIGNED(offset, cluster) ||
        (!QEMU_IS_ALIGNED(offset + bytes, cluster) && offset + bytes != size)) {
        return -ENOTSUP;
    }
    while (ret >= 0 && bytes > 0) {
        AddCowWriteStep st = { .struct_size = sizeof(st) };

        ret = addcow_core_begin_zero(s->core, offset, bytes, &st);
        if (ret < 0) {
            break;
        }
        if (st.kind == ADDCOW_STEP_BUSY) {
            add_cow_wait_generation(s, st.generation);
            continue;
        }
        if (st.kind == ADDCOW_STEP_IN_PLACE) {
            ret = bdrv_co_pwrite_zeroes(s->data_file, offset, st.len,
                                        zero_flags);
        } else {
            ret = bdrv_co_pwrite_zeroes(s->data_file, st.cluster_start,
                                        st.cluster_end - st.cluster_start,
                                        zero_flags);
            if (ret < 0) {
                addcow_core_abort(s->core, st.txn);
            } else {
                ret = addcow_core_commit(s->core, st.txn);
            }
            add_cow_wake_waiters(s);
        }
        offset += st.len;
        bytes -= st.len;
    }
    return ret < 0 ? ret : 0;
}

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset, int64_t bytes,
                         BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = add_cow_sync_backing(bs);
    if (ret >= 0) {
        ret = add_cow_do_zero(bs, offset, bytes, flags &
                              (BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK));
    }
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* As qcow2's: discarded clusters read zeros, never backing data. */
static int coroutine_fn GRAPH_RDLOCK
add_cow_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = add_cow_sync_backing(bs);
    if (ret >= 0) {
        ret = add_cow_do_zero(bs, offset, bytes, BDRV_REQ_MAY_UNMAP);
    }
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* -------------------------------------------------------------- flush */

/*
 * The core's flush sequence: copy the dirty bitmap pages, flush the image
 * file, write the pages to bs->file, flush bs->file, mark them clean.
 */
static int coroutine_fn GRAPH_RDLOCK add_cow_do_flush(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowWriteBack *wb = NULL;
    uint64_t generation;
    bool writable = (bs->open_flags & BDRV_O_RDWR) &&
                    !(bs->open_flags & BDRV_O_INACTIVE);
    int full = 0, ret;

    if (s->layout == 2 && writable) {
        /* Asked before the write-back that makes every bit it saw durable. */
        full = addcow_core_is_fully_allocated(s->core);
        if (full < 0) {
            return full;
        }
    }
    for (;;) {
        ret = addcow_core_writeback_begin(s->core, &wb, &generation);
        if (ret != ADDCOW_BUSY) {
            break;
        }
        add_cow_wait_generation(s, generation);
    }
    if (ret < 0) {
        return ret;
    }
    ret = bdrv_co_flush(s->data_file->bs);
    if (ret >= 0 && addcow_writeback_pages(wb) > 0) {
        ret = addcow_core_writeback_write(s->core, wb);
        if (ret >= 0) {
            ret = bdrv_co_flush(bs->file->bs);
        }
    }
    addcow_core_writeback_end(s->core, wb, ret >= 0);
    add_cow_wake_waiters(s);
    if (ret >= 0 && s->layout == 2 && writable) {
        ret = addcow_core_set_all_allocated(s->core, full);
    }
    return ret < 0 ? ret : 0;
}

static int coroutine_fn GRAPH_RDLOCK add_cow_co_flush_to_os(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = add_cow_do_flush(bs);
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* ------------------------------------------------------- block status */

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_block_status(BlockDriverState *bs, bool want_zero, int64_t offset,
                       int64_t bytes, int64_t *pnum, int64_t *map,
                       BlockDriverState **file)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t n = 0;
    int ret;

    qemu_co_rwlock_rdlock(&s->lock);
    ret = addcow_core_map(s->core, offset, bytes, &n);
    qemu_co_rwlock_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = n;
    if (ret != ADDCOW_MAP_DATA) {
        return 0; /* unallocated: the block layer asks the backing file */
    }
    *map = offset;
    *file = s->data_file->bs;
    return BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
}

static int64_t coroutine_fn GRAPH_RDLOCK
add_cow_co_getlength(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    return addcow_core_get_length(s->core);
}

static int coroutine_fn
add_cow_co_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVAddCowState *s = bs->opaque;

    bdi->cluster_size = addcow_core_get_cluster_size(s->core);
    return 0;
}

/* ----------------------------------------------------------- truncate */

/*
 * The core keeps its size for life: write the bitmap back, close the core,
 * resize through libaddcow's own I/O loop over the same children (it grows
 * the bitmap first, never exposes backing data, and completes the cluster at
 * the old end), then open a new core.
 */
static int coroutine_fn GRAPH_RDLOCK
add_cow_do_truncate(BlockDriverState *bs, int64_t offset, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowIo meta = add_cow_io_of(bs->file);
    AddCowIo image = add_cow_io_of(s->data_file);
    AddCowIo backing;
    AddCowImage *img = NULL;
    int ret, ret2;

    ret = add_cow_do_flush(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not flush add-cow image");
        return ret;
    }
    if (bs->backing) {
        backing = add_cow_io_of(bs->backing);
    }
    add_cow_close_core(bs);
    ret = addcow_open_io(&meta, &image, bs->backing ? &backing : NULL,
                         ADDCOW_OPEN_RDWR, &img);
    if (ret >= 0) {
        ret = addcow_truncate(img, offset);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not resize add-cow image: %s",
                             addcow_last_error());
        }
        ret2 = addcow_close(img);
        if (ret >= 0 && ret2 < 0) {
            ret = ret2;
            error_setg_errno(errp, -ret, "Could not flush add-cow image: %s",
                             addcow_last_error());
        }
    } else {
        error_setg_errno(errp, -ret, "Could not open add-cow image: %s",
                         addcow_last_error());
    }
    ret2 = add_cow_open_core(bs, ret < 0 ? NULL : errp);
    if (ret2 < 0) {
        bs->drv = NULL; /* no core: nothing can use this node any more */
        return ret < 0 ? ret : ret2;
    }
    return ret;
}

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                   PreallocMode prealloc, BdrvRequestFlags flags,
                   Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    /* BDRV_REQ_ZERO_WRITE: libaddcow never lets a grown area read backing
     * data (it allocates what a longer backing file would show). */
    qemu_co_rwlock_wrlock(&s->lock);
    ret = add_cow_do_truncate(bs, offset, errp);
    qemu_co_rwlock_unlock(&s->lock);
    return ret;
}

/* ------------------------------------------------ cache invalidation */

static void coroutine_fn GRAPH_RDLOCK
add_cow_co_invalidate_cache(BlockDriverState *bs, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowHeader *h = NULL;
    AddCowIo meta = add_cow_io_of(bs->file);
    int ret;

    /* Another process may have changed the metadata: read it all again. */
    qemu_co_rwlock_wrlock(&s->lock);
    add_cow_close_core(bs);
    ret = addcow_header_read_io(&meta, &h);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read add-cow header: %s",
                         addcow_last_error());
    } else {
        add_cow_set_backing_name(bs, h);
        addcow_header_free(h);
        ret = add_cow_open_core(bs, errp);
    }
    if (ret < 0) {
        bs->drv = NULL;
    }
    qemu_co_rwlock_unlock(&s->lock);
}

static int GRAPH_RDLOCK add_cow_inactivate(BlockDriverState *bs)
{
    /* Migration hands the image over: the bitmap must be on disk. */
    return bdrv_flush(bs);
}

/* ------------------------------------------------------ backing name */

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_change_backing_file(BlockDriverState *bs, const char *backing_file,
                               const char *backing_fmt)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    /* Layout 1 records no format (QEMU probes it): only layout 2 gets one. */
    qemu_co_rwlock_rdlock(&s->lock);
    ret = addcow_core_set_backing_file(s->core, backing_file,
                                       s->layout == 2 ? backing_fmt : NULL);
    qemu_co_rwlock_unlock(&s->lock);
    if (ret < 0) {
        error_report("add-cow: could not change the backing file: %s",
                     addcow_last_error());
    }
    return ret;
}

/* -------------------------------------------------------------- check */

static int coroutine_fn GRAPH_RDLOCK
add_cow_co_check(BlockDriverState *bs, BdrvCheckResult *result,
                BdrvCheckMode fix)
{
    AddCowCheckResult *r = NULL;
    int64_t i, findings;
    int ret;

    ret = addcow_check(bs->file->bs->filename,
                       fix ? ADDCOW_CHECK_REPAIR : 0, &r);
    if (ret < 0) {
        error_report("add-cow: check failed: %s", addcow_last_error());
        return ret;
    }
    findings = addcow_check_count(r, ADDCOW_CHECK_FINDINGS);
    for (i = 0; i < findings; i++) {
        const char *msg = NULL;
        int kind = addcow_check_finding(r, i, &msg);
        int what = kind & ~ADDCOW_CHECK_REPAIRED;

        /* Notes count nowhere (qemu-img check's output is compared). */
        if (what != ADDCOW_CHECK_NOTE) {
            fprintf(stderr, "%s%s: %s\n",
                    kind & ADDCOW_CHECK_REPAIRED ? "Repaired " : "",
                    what == ADDCOW_CHECK_CORRUPTION ? "ERROR" : "Leaked",
                    msg);
        }
    }
    result->corruptions = addcow_check_count(r, ADDCOW_CHECK_CORRUPTIONS);
    result->leaks = addcow_check_count(r, ADDCOW_CHECK_LEAKS);
    result->corruptions_fixed =
        addcow_check_count(r, ADDCOW_CHECK_CORRUPTIONS_FIXED);
    result->leaks_fixed = addcow_check_count(r, ADDCOW_CHECK_LEAKS_FIXED);
    result->bfi.allocated_clusters =
        addcow_check_count(r, ADDCOW_CHECK_ALLOCATED_CLUSTERS);
    result->bfi.total_clusters =
        addcow_check_count(r, ADDCOW_CHECK_TOTAL_CLUSTERS);
    addcow_check_free(r);
    return 0;
}

/* ------------------------------------------------------------- create */

static QemuOptsList add_cow_create_opts = {
    .name = "add-cow-create-opts",
    .head = QTAILQ_HEAD_INITIALIZER(add_cow_create_opts.head),
    .desc = {
        {
            .name = BLOCK_OPT_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Virtual disk size (the image file's length)"
        },
        {
            .name = ADDCOW_OPT_IMAGE_FILE,
            .type = QEMU_OPT_STRING,
            .help = "File name of the raw image file (default: the "
                    "add-cow file's name with .raw appended)"
        },
        {
            .name = BLOCK_OPT_BACKING_FILE,
            .type = QEMU_OPT_STRING,
            .help = "File name of a base image"
        },
        {
            .name = BLOCK_OPT_BACKING_FMT,
            .type = QEMU_OPT_STRING,
            .help = "Image format of the base image"
        },
        {
            .name = BLOCK_OPT_CLUSTER_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Cluster size (layout 1: 64k only; layout 2: 4k..2M)"
        },
        {
            .name = ADDCOW_OPT_LAYOUT,
            .type = QEMU_OPT_NUMBER,
            .help = "Header layout: 1 (the 2012 format, default) or 2",
            .def_value_str = "1",
        },
        { /* end of list */ }
    }
};

/*
 * A new image's image file holds nothing, as qcow2's new data file: an
 * image file left by an earlier image is cut to zero and grown back (no
 * stale data in unallocated clusters, which check would count as leaks).
 * addcow_create() has refused files in use or in the backing chain.
 */
static int add_cow_clear_image_file(const char *path, const char *image_file,
                                    uint64_t size, Error **errp)
{
    g_autofree char *dir = g_path_get_dirname(path);
    g_autofree char *name = path_is_absolute(image_file) ?
        g_strdup(image_file) : g_build_filename(dir, image_file, NULL);
    int fd = qemu_open(name, O_WRONLY, errp);
    int ret = 0;

    if (fd < 0) {
        return -errno;
    }
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, size) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "Could not clear image file '%s'", name);
    }
    qemu_close(fd);
    return ret;
}

static int coroutine_fn GRAPH_UNLOCKED
add_cow_co_create_opts(BlockDriver *drv, const char *filename, QemuOpts *opts,
                      Error **errp)
{
    g_autofree char *image_file = NULL;
    g_autofree char *backing_file = NULL;
    g_autofree char *backing_fmt = NULL;
    const char *path = filename;
    AddCowCreateOptions co = {
        .struct_size = sizeof(co),
        .flags = ADDCOW_CREATE_SIZE_EXACT, /* qemu-img always gives a size */
    };
    int ret;

    if (!strstart(filename, "file:", &path) && path_has_protocol(path)) {
        error_setg(errp, "add-cow can only create images on local files");
        return -ENOTSUP;
    }
    image_file = qemu_opt_get_del(opts, ADDCOW_OPT_IMAGE_FILE);
    if (!image_file) {
        g_autofree char *base = g_path_get_basename(path);
        image_file = g_strdup_printf("%s.raw", base);
    }
    backing_file = qemu_opt_get_del(opts, BLOCK_OPT_BACKING_FILE);
    backing_fmt = qemu_opt_get_del(opts, BLOCK_OPT_BACKING_FMT);
    co.layout = qemu_opt_get_number_del(opts, ADDCOW_OPT_LAYOUT, 1);
    co.size = ROUND_UP(qemu_opt_get_size_del(opts, BLOCK_OPT_SIZE, 0),
                       BDRV_SECTOR_SIZE);
    co.cluster_size = qemu_opt_get_size_del(opts, BLOCK_OPT_CLUSTER_SIZE, 0);
    co.image_file = image_file;
    co.backing_file = backing_file;
    /* Layout 1 records no backing format (QEMU probes it at open). */
    co.backing_fmt = co.layout == 2 ? backing_fmt : NULL;

    ret = addcow_create(path, &co);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not create add-cow image: %s",
                         addcow_last_error());
        return ret;
    }
    return add_cow_clear_image_file(path, image_file, co.size, errp);
}

static const char *const add_cow_strong_runtime_opts[] = {
    "data-file",
    NULL
};

static BlockDriver bdrv_addcow = {
    .format_name                = "add-cow",
    .instance_size              = sizeof(BDRVAddCowState),
    .bdrv_probe                 = add_cow_probe,
    .bdrv_open                  = add_cow_open,
    .bdrv_close                 = add_cow_close,
    .bdrv_reopen_prepare        = add_cow_reopen_prepare,
    .bdrv_child_perm            = bdrv_default_perms,
    .bdrv_co_create_opts        = add_cow_co_create_opts,
    .bdrv_has_zero_init         = bdrv_has_zero_init_1,
    .bdrv_co_block_status       = add_cow_co_block_status,
    .bdrv_co_preadv_part        = add_cow_co_preadv_part,
    .bdrv_co_pwritev_part       = add_cow_co_pwritev_part,
    .bdrv_co_flush_to_os        = add_cow_co_flush_to_os,
    .bdrv_co_pwrite_zeroes      = add_cow_co_pwrite_zeroes,
    .bdrv_co_pdiscard           = add_cow_co_pdiscard,
    .bdrv_co_change_backing_file = add_cow_co_change_backing_file,
    .bdrv_co_truncate           = add_cow_co_truncate,
    .bdrv_co_getlength          = add_cow_co_getlength,
    .bdrv_co_get_info           = add_cow_co_get_info,
    .bdrv_refresh_limits        = add_cow_refresh_limits,
    .bdrv_co_invalidate_cache   = add_cow_co_invalidate_cache,
    .bdrv_inactivate            = add_cow_inactivate,
    .bdrv_co_check              = add_cow_co_check,

    .create_opts                = &add_cow_create_opts,
    .strong_runtime_opts        = add_cow_strong_runtime_opts,
    .is_format                  = true,
    .supports_backing           = true,
};

static void bdrv_addcow_init(void)
{
    bdrv_register(&bdrv_addcow);
}

block_init(bdrv_addcow_init);
