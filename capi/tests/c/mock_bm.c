/*
 * mock_bm.c - a tiny stand-in for libsmem's BM part, used only to run bm_multirank.c's
 * protocol (4 processes, flags, retries, teardown handshake) before the real BM runtime
 * exists. Built as libsmem_mock.so by capi/tests/bm_multirank.rs.
 *
 * All ranks map one shared file ($SMEM_MOCK_FILE) at the same fixed address: a header page of
 * joined flags, then WORLD windows of HBM 2 MiB + DRAM 4 MiB. Copies are memcpy with the
 * SPEC's range checks (one part of one joined window). It implements only what
 * bm_multirank.c calls and is no reference for the real library's behaviour beyond that.
 */
#define _GNU_SOURCE

#include "smem.h"
#include "smem_bm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024ull * 1024ull)
#define MAX_RANKS 64
#define FIXED_ADDR ((uintptr_t)0x5e0000000000ull)
#define HEADER 4096ull

static __thread char err_cur[256];
static __thread char err_taken[256];
static int inited, rank_id = -1, world;
static smem_bm_config_t init_cfg;
static char init_url[128];
static volatile int *joined; /* in the shared header */
static uint8_t *base;
static uint64_t hbm_sz, dram_sz, stride;
static int created, is_joined, destroyed;
static int dummy_handle;

static int32_t fail(int32_t code, const char *msg)
{
    snprintf(err_cur, sizeof err_cur, "%s [mock %d]", msg, (int)code);
    return code;
}

const char *smem_get_last_err_msg(void) { return err_cur; }
const char *smem_get_and_clear_last_err_msg(void)
{
    memcpy(err_taken, err_cur, sizeof err_taken);
    err_cur[0] = '\0';
    return err_taken;
}
int32_t smem_init(uint32_t flags) { return flags ? fail(SM_INVALID_PARAM, "flags") : SM_OK; }
void smem_uninit(void) {}
/* The mock logs nothing: a logger is accepted and never called. */
int32_t smem_set_extern_logger(void (*func)(int level, const char *msg))
{
    (void)func;
    return SM_OK;
}
int32_t smem_set_log_level(int level) { return level < 0 || level > 3 ? fail(SM_INVALID_PARAM, "level") : SM_OK; }

int32_t smem_bm_config_init(smem_bm_config_t *c)
{
    if (!c) return fail(SM_INVALID_PARAM, "config NULL");
    memset(c, 0, sizeof *c);
    c->initTimeout = c->createTimeout = c->controlOperationTimeout = 120;
    c->startConfigStore = true;
    c->unifiedAddressSpace = true;
    c->rankId = 65535;
    return SM_OK;
}

int32_t smem_bm_init(const char *url, uint32_t ws, uint16_t dev, const smem_bm_config_t *c)
{
    (void)dev;
    if (!url || !c || ws == 0 || ws > MAX_RANKS || c->rankId >= ws)
        return fail(SM_INVALID_PARAM, "bad init args");
    if (inited) {
        if (ws == (uint32_t)world && strcmp(url, init_url) == 0 &&
            memcmp(c, &init_cfg, sizeof *c) == 0)
            return SM_OK;
        return fail(SM_REPEAT_CALL, "already initialised differently");
    }
    inited = 1;
    world = (int)ws;
    rank_id = c->rankId;
    init_cfg = *c;
    snprintf(init_url, sizeof init_url, "%s", url);
    return SM_OK;
}

void smem_bm_uninit(uint32_t flags)
{
    (void)flags;
    inited = 0;
    rank_id = -1;
}

uint32_t smem_bm_get_rank_id(void)
{
    if (!inited) {
        fail(SM_NOT_INITIALIZED, "not initialised");
        return UINT32_MAX;
    }
    return (uint32_t)rank_id;
}

smem_bm_t smem_bm_create(uint32_t id, uint32_t members, smem_bm_data_op_type op, uint64_t dram,
                         uint64_t hbm, uint32_t flags)
{
    const char *path = getenv("SMEM_MOCK_FILE");
    int fd;
    uint64_t size;
    void *p;
    (void)op;
    (void)flags;
    if (!inited) { fail(SM_NOT_INITIALIZED, "not initialised"); return NULL; }
    if (created) { fail(SM_DUPLICATED_OBJECT, "SM_DUPLICATED_OBJECT"); return NULL; }
    if (id != 0 || members != (uint32_t)world || !path) { fail(SM_INVALID_PARAM, "create"); return NULL; }
    hbm_sz = (hbm + 2 * MIB - 1) / (2 * MIB) * (2 * MIB);
    dram_sz = (dram + 2 * MIB - 1) / (2 * MIB) * (2 * MIB);
    stride = hbm_sz + dram_sz;
    size = HEADER + stride * (uint64_t)world;
    fd = open(path, O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) { fail(SM_ERROR, "open"); return NULL; }
    p = mmap((void *)FIXED_ADDR, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE,
             fd, 0);
    close(fd);
    if (p != (void *)FIXED_ADDR) { fail(SM_MALLOC_FAILED, "mmap"); return NULL; }
    joined = (volatile int *)p;
    base = (uint8_t *)p + HEADER;
    created = 1;
    return &dummy_handle;
}

static int32_t check_handle(smem_bm_t h)
{
    if (!h) return fail(SM_INVALID_PARAM, "NULL handle");
    if (h != &dummy_handle || !created || destroyed) return fail(SM_OBJECT_NOT_EXISTS, "gone");
    return SM_OK;
}

int32_t smem_bm_join(smem_bm_t h, uint32_t flags, void **out)
{
    int32_t rc = check_handle(h);
    (void)flags;
    if (rc) return rc;
    if (!out) return fail(SM_INVALID_PARAM, "out NULL");
    if (is_joined) return fail(SM_REPEAT_CALL, "joined");
    is_joined = 1;
    __atomic_store_n(&joined[rank_id], 1, __ATOMIC_SEQ_CST);
    *out = base + (uint64_t)rank_id * stride;
    return SM_OK;
}

int32_t smem_bm_leave(smem_bm_t h, uint32_t flags)
{
    int32_t rc = check_handle(h);
    (void)flags;
    if (rc) return rc;
    if (!is_joined) return fail(SM_OBJECT_NOT_EXISTS, "not joined");
    is_joined = 0;
    __atomic_store_n(&joined[rank_id], 0, __ATOMIC_SEQ_CST);
    return SM_OK;
}

void smem_bm_destroy(smem_bm_t h)
{
    if (check_handle(h)) return;
    if (is_joined) smem_bm_leave(h, 0);
    destroyed = 1;
}

uint64_t smem_bm_get_local_mem_size(smem_bm_t h)
{
    return check_handle(h) ? 0 : stride;
}

void *smem_bm_ptr(smem_bm_t h, uint16_t peer)
{
    if (check_handle(h)) return NULL;
    if (peer >= world) { fail(SM_INVALID_PARAM, "peer"); return NULL; }
    return base + (uint64_t)peer * stride;
}

/* 0 when [a, a+n) lies in one part of one joined window. */
static int32_t check_global(const void *a, uint64_t n)
{
    uintptr_t p = (uintptr_t)a, b = (uintptr_t)base, off, r, in;
    if (n == 0 || p < b || p - b >= stride * (uint64_t)world) return fail(SM_INVALID_PARAM, "not global");
    off = p - b;
    r = off / stride;
    in = off % stride;
    if (!__atomic_load_n(&joined[r], __ATOMIC_SEQ_CST)) return fail(SM_INVALID_PARAM, "unjoined");
    if (in < hbm_sz) {
        if (n > hbm_sz - in) return fail(SM_INVALID_PARAM, "crosses HBM part");
    } else if (n > stride - in) {
        return fail(SM_INVALID_PARAM, "crosses DRAM part");
    }
    return SM_OK;
}

int32_t smem_bm_copy(smem_bm_t h, const void *src, void *dst, uint64_t n, smem_bm_copy_type t,
                     uint32_t flags)
{
    int32_t rc = check_handle(h);
    (void)flags;
    if (rc) return rc;
    if (!src || !dst || n == 0 || (unsigned)t >= SMEMB_COPY_BUTT) return fail(SM_INVALID_PARAM, "args");
    if (!is_joined) return fail(SM_INVALID_PARAM, "self not joined");
    rc = (t == SMEMB_COPY_L2G || t == SMEMB_COPY_H2G) ? check_global(dst, n) : check_global(src, n);
    if (rc) return rc;
    memcpy(dst, src, n);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return SM_OK;
}

int32_t smem_bm_copy_2d(smem_bm_t h, const void *src, uint64_t sp, void *dst, uint64_t dp,
                        uint64_t w, uint64_t hgt, smem_bm_copy_type t, uint32_t flags)
{
    int32_t rc = check_handle(h);
    uint64_t i;
    (void)flags;
    if (rc) return rc;
    if (!src || !dst || !w || !hgt || sp < w || dp < w || (unsigned)t >= SMEMB_COPY_BUTT)
        return fail(SM_INVALID_PARAM, "args");
    rc = (t == SMEMB_COPY_L2G || t == SMEMB_COPY_H2G) ? check_global(dst, (hgt - 1) * dp + w)
                                                       : check_global(src, (hgt - 1) * sp + w);
    if (rc) return rc;
    for (i = 0; i < hgt; i++) memcpy((uint8_t *)dst + i * dp, (const uint8_t *)src + i * sp, w);
    return SM_OK;
}
