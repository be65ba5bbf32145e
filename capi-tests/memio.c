#include "memio.h"

/* CAPI_TRACE_CALLS=1 in the environment prints every counted host call (to see which call
 * a fault point is). */
static int fault(memfile *m, const char *op)
{
    struct faults *f = m->faults;
    if (!f)
        return 0;
    long n = atomic_fetch_add(&f->calls, 1) + 1;
    int fail = f->fail_at > 0 && (n == f->fail_at || (f->sticky && n > f->fail_at));
    static int trace = -1;
    if (trace < 0)
        trace = getenv("CAPI_TRACE_CALLS") != NULL;
    if (trace)
        fprintf(stderr, "    host call %ld: %s %s%s\n", n, m->name, op, fail ? " (fails)" : "");
    if (fail) {
        atomic_fetch_add(&f->fired, 1);
        return -f->err;
    }
    return 0;
}

static void reserve(memfile *m, size_t len)
{
    if (len <= m->cap)
        return;
    size_t cap = m->cap ? m->cap : 4096;
    while (cap < len)
        cap *= 2;
    uint8_t *p = realloc(m->data, cap);
    if (!p)
        abort();
    m->data = p;
    m->cap = cap;
}

/* Sets the length, zero-filling growth. Caller holds the lock. */
static void set_len(memfile *m, size_t len)
{
    reserve(m, len);
    if (len > m->len)
        memset(m->data + m->len, 0, len - m->len);
    m->len = len;
}

void mf_init(memfile *m, const char *name, struct faults *f)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->name = name;
    m->faults = f;
}

void mf_free(memfile *m)
{
    free(m->data);
    free(m->dur);
    pthread_mutex_destroy(&m->mu);
    memset(m, 0, sizeof *m);
}

void mf_commit(memfile *m)
{
    free(m->dur);
    m->dur = xmalloc(m->len);
    memcpy(m->dur, m->data, m->len);
    m->dur_len = m->len;
}

void mf_crash(memfile *m)
{
    m->len = 0;
    set_len(m, m->dur_len);
    memcpy(m->data, m->dur, m->dur_len);
}

void mf_set(memfile *m, const uint8_t *buf, size_t len)
{
    m->len = 0;
    set_len(m, len);
    if (len)
        memcpy(m->data, buf, len);
    mf_commit(m);
}

void mf_set_pat(memfile *m, size_t len, uint32_t seed)
{
    m->len = 0;
    set_len(m, len);
    fill_pat(m->data, len, seed, 0);
    mf_commit(m);
}

void mf_set_zero(memfile *m, size_t len)
{
    m->len = 0;
    set_len(m, len);
    mf_commit(m);
}

void mf_make_meta(memfile *m, const char *image_name, const char *backing_name, uint64_t size)
{
    uint64_t clusters = (size + CL - 1) / CL;
    size_t len = (size_t)(HDR + (clusters + 7) / 8);
    uint8_t *h = xcalloc(len);
    memcpy(h, "ADD_COW\xff", 8);
    h[11] = 1;
    if (backing_name)
        memcpy(h + 12, backing_name, strlen(backing_name));
    memcpy(h + 1036, image_name, strlen(image_name));
    mf_set(m, h, len);
    free(h);
}

static int check_iov(memfile *m, const struct iovec *iov, int iovcnt, size_t *total)
{
    *total = 0;
    /* addcow.h: a callback may see ADDCOW_IOV_MAX + 2 iovecs (a cluster's head and tail around
     * a guest's ADDCOW_IOV_MAX buffers), no more. */
    if (iovcnt < 0 || iovcnt > ADDCOW_IOV_MAX + 2 || (iovcnt > 0 && !iov)) {
        atomic_fetch_add(&m->bad_calls, 1);
        return -EINVAL;
    }
    for (int i = 0; i < iovcnt; i++) {
        if (!iov[i].iov_base && iov[i].iov_len) {
            atomic_fetch_add(&m->bad_calls, 1);
            return -EINVAL;
        }
        *total += iov[i].iov_len;
    }
    return 0;
}

static int mf_preadv(void *opaque, uint64_t offset, const struct iovec *iov, int iovcnt)
{
    memfile *m = opaque;
    atomic_fetch_add(&m->n_preadv, 1);
    int e = fault(m, "preadv");
    if (e)
        return e;
    size_t total;
    if ((e = check_iov(m, iov, iovcnt, &total)))
        return e;
    pthread_mutex_lock(&m->mu);
    if (offset + total > m->len)
        atomic_fetch_add(&m->past_end_reads, 1);
    uint64_t pos = offset;
    for (int i = 0; i < iovcnt; i++) {
        uint8_t *dst = iov[i].iov_base;
        for (size_t k = 0; k < iov[i].iov_len; k++, pos++)
            dst[k] = pos < m->len ? m->data[pos] : 0;
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int mf_pwritev(void *opaque, uint64_t offset, const struct iovec *iov, int iovcnt)
{
    memfile *m = opaque;
    atomic_fetch_add(&m->n_pwritev, 1);
    int e = fault(m, "pwritev");
    if (e)
        return e;
    size_t total;
    if ((e = check_iov(m, iov, iovcnt, &total)))
        return e;
    pthread_mutex_lock(&m->mu);
    if (offset + total > m->len)
        set_len(m, (size_t)(offset + total));
    uint64_t pos = offset;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len)
            memcpy(m->data + pos, iov[i].iov_base, iov[i].iov_len);
        pos += iov[i].iov_len;
    }
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int mf_flush(void *opaque)
{
    memfile *m = opaque;
    atomic_fetch_add(&m->n_flush, 1);
    int e = fault(m, "flush");
    if (e)
        return e;
    pthread_mutex_lock(&m->mu);
    mf_commit(m);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

static int64_t mf_get_length(void *opaque)
{
    memfile *m = opaque;
    atomic_fetch_add(&m->n_get_length, 1);
    int e = fault(m, "get_length");
    if (e)
        return e;
    pthread_mutex_lock(&m->mu);
    int64_t l = (int64_t)m->len;
    pthread_mutex_unlock(&m->mu);
    return l;
}

static int mf_truncate(void *opaque, uint64_t size)
{
    memfile *m = opaque;
    atomic_fetch_add(&m->n_truncate, 1);
    int e = fault(m, "truncate");
    if (e)
        return e;
    pthread_mutex_lock(&m->mu);
    set_len(m, (size_t)size);
    pthread_mutex_unlock(&m->mu);
    return 0;
}

AddCowIo mf_io(memfile *m, int with_truncate)
{
    AddCowIo io;
    memset(&io, 0, sizeof io);
    io.opaque = m;
    io.preadv = mf_preadv;
    io.pwritev = mf_pwritev;
    io.flush = mf_flush;
    io.get_length = mf_get_length;
    io.truncate = with_truncate ? mf_truncate : NULL;
    return io;
}
