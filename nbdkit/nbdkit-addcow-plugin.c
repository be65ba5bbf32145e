/* nbdkit-addcow-plugin: serves an add-cow image over NBD through libaddcow.
 *
 *   nbdkit ./nbdkit-addcow-plugin.so file=vm.add-cow [backing_fmt=raw|add-cow]
 *          [writethrough=true|false]          (nbdkit -r serves it read-only)
 *
 * Every connection shares ONE image handle: two handles on the same image would each keep a
 * bitmap and overwrite each other's bits. libaddcow is safe for parallel calls on one handle,
 * so the thread model is PARALLEL; and since a flush on any connection flushes that shared
 * handle, i.e. every completed write of every connection, multi-conn is safe to advertise.
 * The handle opens with the first connection and closes (flushing) with the last one.
 */

#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include <addcow.h>

/* Zeroes are written in chunks of this size when emulating write_zeroes. */
#define ZERO_CHUNK (1024 * 1024)

static char *filename;
static uint32_t open_flags;

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static AddCowImage *shared;      /* guarded by shared_lock for open/close */
static unsigned shared_users;    /* guarded by shared_lock */
static bool shared_writable;     /* guarded by shared_lock */

static const unsigned char zeroes[ZERO_CHUNK];

/* Reports a failed libaddcow call to nbdkit: errno for the client, message for the log. */
static int
fail (int r)
{
  nbdkit_set_error (-r);
  nbdkit_error ("%s", addcow_last_error ());
  return -1;
}

static void
plugin_unload (void)
{
  free (filename);
}

static int
plugin_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = nbdkit_absolute_path (value);
    return filename ? 0 : -1;
  }
  if (strcmp (key, "backing_fmt") == 0) {
    if (strcmp (value, "raw") == 0)
      open_flags &= ~ADDCOW_OPEN_BACKING_ADDCOW;
    else if (strcmp (value, "add-cow") == 0)
      open_flags |= ADDCOW_OPEN_BACKING_ADDCOW;
    else {
      nbdkit_error ("backing_fmt must be raw or add-cow, not '%s'", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "writethrough") == 0) {
    int b = nbdkit_parse_bool (value);
    if (b == -1)
      return -1;
    open_flags = b ? open_flags | ADDCOW_OPEN_WRITETHROUGH
                   : open_flags & ~ADDCOW_OPEN_WRITETHROUGH;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s'", key);
  return -1;
}

static int
plugin_config_complete (void)
{
  if (filename == NULL) {
    nbdkit_error ("the file parameter (the .add-cow file) is required");
    return -1;
  }
  return 0;
}

#define plugin_config_help \
  "file=<FILENAME>     (required) The .add-cow file.\n" \
  "backing_fmt=raw|add-cow       Format of its backing file (default raw).\n" \
  "writethrough=true|false       Make every write durable on return (default false)."

static void *
plugin_open (int readonly)
{
  void *h = NULL;

  pthread_mutex_lock (&shared_lock);
  if (shared == NULL) {
    uint32_t flags = open_flags | (readonly ? 0 : ADDCOW_OPEN_RDWR);
    int r = addcow_open (filename, flags, &shared);
    if (r < 0) {
      fail (r);
      goto out;
    }
    shared_writable = !readonly;
  }
  else if (!readonly && !shared_writable) {
    nbdkit_error ("the image is already open read-only for another connection");
    nbdkit_set_error (EROFS);
    goto out;
  }
  shared_users++;
  h = shared;
 out:
  pthread_mutex_unlock (&shared_lock);
  return h;
}

static void
plugin_close (void *handle)
{
  (void) handle;
  pthread_mutex_lock (&shared_lock);
  if (--shared_users == 0) {
    int r = addcow_close (shared);
    shared = NULL;
    if (r < 0)
      nbdkit_error ("closing %s: %s", filename, addcow_last_error ());
  }
  pthread_mutex_unlock (&shared_lock);
}

static int64_t
plugin_get_size (void *handle)
{
  int64_t r = addcow_get_length (handle);
  return r < 0 ? fail ((int) r) : r;
}

/* can_multi_conn, can_flush, can_zero, can_trim, can_extents: all supported. */
static int
plugin_can_yes (void *handle)
{
  (void) handle;
  return 1;
}

static int
plugin_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

static int
plugin_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  int r;

  (void) flags;
  r = addcow_pread (handle, offset, buf, count);
  return r < 0 ? fail (r) : 0;
}

/* FUA: the write is durable before the reply. */
static int
finish_write (void *handle, uint32_t flags)
{
  int r = 0;

  if (flags & NBDKIT_FLAG_FUA)
    r = addcow_flush (handle);
  return r < 0 ? fail (r) : 0;
}

static int
plugin_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  int r = addcow_pwrite (handle, offset, buf, count);
  return r < 0 ? fail (r) : finish_write (handle, flags);
}

static int
plugin_flush (void *handle, uint32_t flags)
{
  int r;

  (void) flags;
  r = addcow_flush (handle);
  return r < 0 ? fail (r) : 0;
}

/* Write zeroes by writing zeroes (add-cow has no zero clusters): an unallocated range must
 * become allocated, or it would keep showing backing data. The one range already reading
 * zeroes without allocation -- unallocated and past the backing file's end -- is skipped. */
static int
plugin_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  int64_t backing_len = addcow_get_backing_length (handle);
  uint64_t end = offset + count;

  if (backing_len < 0)
    return fail ((int) backing_len);
  while (offset < end) {
    uint64_t n;
    int allocated = addcow_is_allocated (handle, offset, end - offset, &n);
    if (allocated < 0)
      return fail (allocated);
    if (n == 0)
      break;
    if (allocated || offset < (uint64_t) backing_len) {
      int r;
      if (!allocated && offset + n > (uint64_t) backing_len)
        n = (uint64_t) backing_len - offset;
      if (n > ZERO_CHUNK)
        n = ZERO_CHUNK;
      r = addcow_pwrite (handle, offset, zeroes, n);
      if (r < 0)
        return fail (r);
    }
    offset += n;
  }
  return finish_write (handle, flags);
}

/* Trim is advisory in NBD: the contents of a trimmed range are unspecified, so leaving them as
 * they are is correct (and allocating a whole disk on fstrim would not be). */
static int
plugin_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  (void) count;
  (void) offset;
  return finish_write (handle, flags);
}

/* Block status: allocated clusters are data; unallocated ones read the backing file (data)
 * up to its end, and zeroes past it (a hole). */
static int
plugin_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  int64_t backing_len = addcow_get_backing_length (handle);
  uint64_t end = offset + count;

  if (backing_len < 0)
    return fail ((int) backing_len);
  while (offset < end) {
    uint64_t n;
    uint32_t type = 0;
    int allocated = addcow_is_allocated (handle, offset, end - offset, &n);
    if (allocated < 0)
      return fail (allocated);
    if (n == 0)
      break;
    if (!allocated) {
      if (offset >= (uint64_t) backing_len)
        type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
      else if (offset + n > (uint64_t) backing_len)
        n = (uint64_t) backing_len - offset;
    }
    if (nbdkit_add_extent (extents, offset, n, type) == -1)
      return -1;
    offset += n;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name              = "addcow",
  .longname          = "add-cow image (raw image with a backing file) via libaddcow",
  .version           = "0.1.0",
  .unload            = plugin_unload,
  .config            = plugin_config,
  .config_complete   = plugin_config_complete,
  .config_help       = plugin_config_help,
  .magic_config_key  = "file",
  .open              = plugin_open,
  .close             = plugin_close,
  .get_size          = plugin_get_size,
  .can_multi_conn    = plugin_can_yes,
  .can_fua           = plugin_can_fua,
  .can_flush         = plugin_can_yes,
  .can_zero          = plugin_can_yes,
  .can_trim          = plugin_can_yes,
  .can_extents       = plugin_can_yes,
  .pread             = plugin_pread,
  .pwrite            = plugin_pwrite,
  .flush             = plugin_flush,
  .zero              = plugin_zero,
  .trim              = plugin_trim,
  .extents           = plugin_extents,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
