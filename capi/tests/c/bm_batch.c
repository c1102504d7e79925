/*
 * bm_batch.c - one rank of the SPEC 6.1 test (batch, asynchronous and window-to-window copies,
 * registered memory, GVA lookup, copy flags), written against the headers only.
 *
 *   bm_batch RANK WORLD_SIZE PORT [kill]
 *
 * Driven by capi/tests/bm_batch.rs: WORLD_SIZE (3) copies on one host (SMEM_TEST_SDMA_ONLY=1:
 * the object is created with SMEMB_DATA_OP_SDMA only, no transport), or on two simulated
 * hosts (SMEM_HOST_ID: rank 0 on one, ranks 1 and 2 on the other), so every route is taken:
 * mapped windows, one side over the TCP transport (local-to-remote, remote-to-local) and G2G
 * between two windows of the other host (remote-to-remote). Rank 0 hosts the config store.
 *
 * Object 0, DRAM only (4 MiB per rank; the window is its DRAM part):
 *   [0, 8)                      the owner's phase flag
 *   [64K + w*256K, +256K)       written by rank w with a batch of 64 x 4 KiB H2G entries
 *   [1M, +256K)                 G2G target: rank w copies its region in rank (w+1)%n here,
 *                               in the window of rank (w+2)%n (one writer per target)
 *   [2M + w*64K, +64K)          written by rank w with an asynchronous batch
 *   [2M + 256K + w*4K, +4K)     written by rank w with an asynchronous smem_bm_copy
 *   [2M + 512K + w*8K, +8K)     written by rank w with an asynchronous smem_bm_copy_2d
 *   [3M, +64K)                  the owner's own: refused copies must leave it zero
 *
 * "kill" mode (2 ranks on two simulated hosts): rank 1 kills itself (SIGKILL) once rank 0
 * started copying batches into its window; rank 0's batches (synchronous and asynchronous)
 * must then fail with an error, never hang or crash.
 */
#define _POSIX_C_SOURCE 200809L

#include "smem.h"
#include "smem_bm.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define KIB (1024ull)
#define MIB (1024ull * 1024ull)
#define DRAM_SIZE (4 * MIB)
#define MAX_RANKS 4
#define WAIT_S 90.0
#define ENTRIES 64
#define ENTRY (4 * KIB)
#define REGION (ENTRIES * ENTRY)

static int g_rank = -1;
static int g_ws;
static smem_bm_t g_h;
static uint8_t *g_base[MAX_RANKS];

#define FAIL(...)                                                                   \
    do {                                                                            \
        fprintf(stderr, "rank %d: %s:%d: ", g_rank, __FILE__, __LINE__);            \
        fprintf(stderr, __VA_ARGS__);                                               \
        fprintf(stderr, " (last error: %s)\n", smem_get_last_err_msg());            \
        exit(1);                                                                    \
    } while (0)

#define EXPECT(cond)                          \
    do {                                      \
        if (!(cond)) {                        \
            FAIL("EXPECT failed: %s", #cond); \
        }                                     \
    } while (0)

#define EXPECT_RC(call, want)                                                  \
    do {                                                                       \
        int32_t rc_ = (call);                                                  \
        if (rc_ != (want)) {                                                   \
            FAIL("%s returned %d, expected %d", #call, (int)rc_, (int)(want)); \
        }                                                                      \
    } while (0)

/* The call fails with `want` and its message contains `needle`. */
#define EXPECT_REFUSED(call, want, needle)                                         \
    do {                                                                           \
        EXPECT_RC(call, want);                                                     \
        if (strstr(smem_get_last_err_msg(), (needle)) == NULL) {                   \
            FAIL("%s: the message does not mention \"%s\"", #call, (needle));      \
        }                                                                          \
        (void)smem_get_and_clear_last_err_msg();                                   \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_ms(long ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

static uint8_t pattern(int writer, int owner, uint64_t i, int salt)
{
    return (uint8_t)(writer * 131 + owner * 31 + salt * 17 + (int)(i * 7) + (int)(i >> 9));
}

static void fill(uint8_t *buf, uint64_t n, int writer, int owner, int salt)
{
    uint64_t i;
    for (i = 0; i < n; i++) {
        buf[i] = pattern(writer, owner, i, salt);
    }
}

static void verify(const uint8_t *buf, uint64_t n, int writer, int owner, int salt,
                   const char *what)
{
    uint64_t i;
    for (i = 0; i < n; i++) {
        if (buf[i] != pattern(writer, owner, i, salt)) {
            FAIL("%s: byte %llu is %u, expected %u (writer %d, owner %d)", what,
                 (unsigned long long)i, buf[i], pattern(writer, owner, i, salt), writer, owner);
        }
    }
}

static uint8_t *win(int owner, uint64_t off) { return g_base[owner] + off; }

static void copy_retry(const void *src, void *dst, uint64_t n, smem_bm_copy_type t)
{
    double deadline = now_s() + WAIT_S;
    for (;;) {
        int32_t rc = smem_bm_copy(g_h, src, dst, n, t, 0);
        if (rc == SM_OK) {
            return;
        }
        if ((rc != SM_INVALID_PARAM && rc != SM_OBJECT_NOT_EXISTS) || now_s() > deadline) {
            FAIL("smem_bm_copy returned %d", (int)rc);
        }
        (void)smem_get_and_clear_last_err_msg();
        pause_ms(2);
    }
}

static uint64_t read_flag(int owner)
{
    uint64_t v = 0;
    copy_retry(win(owner, 0), &v, sizeof v, SMEMB_COPY_G2H);
    return v;
}

static void write_flag(uint64_t phase)
{
    copy_retry(&phase, win(g_rank, 0), sizeof phase, SMEMB_COPY_H2G);
}

static void wait_flag(int owner, uint64_t phase)
{
    double deadline = now_s() + WAIT_S;
    while (read_flag(owner) < phase) {
        if (now_s() > deadline) {
            FAIL("rank %d did not reach phase %llu in time", owner, (unsigned long long)phase);
        }
        pause_ms(2);
    }
}

static void wait_phase(uint64_t phase)
{
    int r;
    for (r = 0; r < g_ws; r++) {
        wait_flag(r, phase);
    }
}

static void wait_unreachable(int owner)
{
    double deadline = now_s() + WAIT_S;
    uint8_t b = 0;
    for (;;) {
        int32_t rc = smem_bm_copy(g_h, win(owner, 8), &b, 1, SMEMB_COPY_G2H, 0);
        (void)smem_get_and_clear_last_err_msg();
        if (rc == SM_OBJECT_NOT_EXISTS || rc == SM_INVALID_PARAM) {
            return;
        }
        if (now_s() > deadline) {
            FAIL("rank %d's window is still reachable", owner);
        }
        pause_ms(2);
    }
}

static void start(const char *url, uint32_t ws)
{
    smem_bm_config_t cfg;
    void *local = NULL;
    int r;
    /* SMEM_TEST_SDMA_ONLY=1 (one host): no network transport at all. */
    const char *sdma_only = getenv("SMEM_TEST_SDMA_ONLY");
    smem_bm_data_op_type ops = (sdma_only != NULL && strcmp(sdma_only, "1") == 0)
                                   ? SMEMB_DATA_OP_SDMA
                                   : (smem_bm_data_op_type)(SMEMB_DATA_OP_SDMA |
                                                            SMEMB_DATA_OP_HOST_TCP);
    EXPECT_RC(smem_init(0), SM_OK);
    EXPECT_RC(smem_bm_config_init(&cfg), SM_OK);
    cfg.rankId = (uint16_t)g_rank;
    cfg.initTimeout = 60;
    cfg.createTimeout = 60;
    cfg.controlOperationTimeout = 10;
    EXPECT_RC(smem_bm_init(url, ws, 0, &cfg), SM_OK);
    g_h = smem_bm_create(0, ws, ops, DRAM_SIZE, 0, 0);
    EXPECT(g_h != NULL);
    EXPECT_RC(smem_bm_join(g_h, 0, &local), SM_OK);
    for (r = 0; r < (int)ws; r++) {
        g_base[r] = (uint8_t *)smem_bm_ptr(g_h, (uint16_t)r);
        EXPECT(g_base[r] != NULL);
    }
    EXPECT(local == g_base[g_rank]);
}

static int32_t batch(void **src, void **dst, const uint64_t *sizes, uint32_t n,
                     smem_bm_copy_type t, uint32_t flags)
{
    smem_batch_copy_params p;
    p.sources = src;
    p.destinations = dst;
    p.dataSizes = sizes;
    p.batchSize = n;
    return smem_bm_copy_batch(g_h, &p, t, flags);
}

static int all_zero(const uint8_t *own, uint64_t n)
{
    uint8_t buf[4096];
    uint64_t at, i;
    for (at = 0; at < n; at += sizeof buf) {
        EXPECT_RC(smem_bm_copy(g_h, own + at, buf, sizeof buf, SMEMB_COPY_G2H, 0), SM_OK);
        for (i = 0; i < sizeof buf; i++) {
            if (buf[i] != 0) {
                return 0;
            }
        }
    }
    return 1;
}

/* get_rank_id_by_gva on every window edge and outside the object. */
static void check_gva_lookup(void)
{
    int r;
    uint64_t stride = (uint64_t)(g_base[1] - g_base[0]);
    for (r = 0; r < g_ws; r++) {
        EXPECT(smem_bm_get_rank_id_by_gva(g_h, g_base[r]) == (uint32_t)r);
        EXPECT(smem_bm_get_rank_id_by_gva(g_h, g_base[r] + stride - 1) == (uint32_t)r);
    }
    EXPECT(smem_bm_get_rank_id_by_gva(g_h, g_base[g_ws - 1] + stride) == UINT32_MAX);
    EXPECT(smem_bm_get_rank_id_by_gva(g_h, g_base[0] - 1) == UINT32_MAX);
    EXPECT(strstr(smem_get_last_err_msg(), "lies in no window") != NULL);
    EXPECT(smem_bm_get_rank_id_by_gva(NULL, g_base[0]) == UINT32_MAX);
    (void)smem_get_and_clear_last_err_msg();
}

/* Every refusal of SPEC 6.1 and issue 12 item 3, on this rank's own window: nothing moves. */
static void check_refusals(void)
{
    static uint8_t src[ENTRIES][ENTRY];
    void *s[ENTRIES], *d[ENTRIES];
    uint64_t n[ENTRIES];
    uint8_t *own = win(g_rank, 3 * MIB);
    uint8_t reg[8192];
    uint64_t stride = (uint64_t)(g_base[1] - g_base[0]);
    int i;
    memset(src, 0xA5, sizeof src);
    for (i = 0; i < ENTRIES; i++) {
        s[i] = src[i];
        d[i] = own + (uint64_t)i * 1024;
        n[i] = 1024;
    }
    /* Copy flags: 0 or SMEM_ASYNC_COPY_FLAG; any other bit moves nothing. */
    EXPECT_REFUSED(smem_bm_copy(g_h, src, own, 64, SMEMB_COPY_H2G, 2), SM_INVALID_PARAM, "flags");
    EXPECT_REFUSED(smem_bm_copy(g_h, src, own, 64, SMEMB_COPY_H2G, 0x80000000u),
                   SM_INVALID_PARAM, "flags");
    EXPECT_REFUSED(smem_bm_copy(g_h, src, own, 64, SMEMB_COPY_H2G, SMEM_ASYNC_COPY_FLAG | 4),
                   SM_INVALID_PARAM, "flags");
    EXPECT_REFUSED(smem_bm_copy_2d(g_h, src, 128, own, 256, 64, 4, SMEMB_COPY_H2G, 8),
                   SM_INVALID_PARAM, "flags");
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_H2G, 16), SM_INVALID_PARAM, "flags");
    /* One bad entry (crossing the end of the DRAM part) names its index; nothing copied. */
    d[37] = win(g_rank, DRAM_SIZE - 512);
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "entry 37");
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_H2G, SMEM_ASYNC_COPY_FLAG),
                   SM_INVALID_PARAM, "entry 37");
    EXPECT_RC(smem_bm_wait(g_h), SM_OK); /* nothing was queued */
    d[37] = own + 37 * 1024;
    s[5] = NULL;
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "entry 5");
    s[5] = src[5];
    n[63] = 0;
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "entry 63");
    n[63] = 1024;
    /* A G2G entry whose source is not in a window. */
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, SMEMB_COPY_G2G, 0), SM_INVALID_PARAM, "entry 0");
    EXPECT_REFUSED(batch(s, d, n, 0, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "batchSize");
    EXPECT_REFUSED(batch(s, d, n, 65537, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "batchSize");
    EXPECT_REFUSED(batch(NULL, d, n, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "sources");
    EXPECT_REFUSED(batch(s, NULL, n, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM,
                   "destinations");
    EXPECT_REFUSED(batch(s, d, NULL, ENTRIES, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM,
                   "dataSizes");
    EXPECT_REFUSED(batch(s, d, n, ENTRIES, (smem_bm_copy_type)5, 0), SM_INVALID_PARAM,
                   "copy type");
    EXPECT_REFUSED(smem_bm_copy_batch(g_h, NULL, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM, "params");
    EXPECT_REFUSED(smem_bm_copy_batch(NULL, NULL, SMEMB_COPY_H2G, 0), SM_INVALID_PARAM,
                   "handle");
    /* G2G refusals: overlap, outside, crossing; async ones fail at once. */
    EXPECT_REFUSED(smem_bm_copy(g_h, own, own + 100, 4096, SMEMB_COPY_G2G, 0), SM_INVALID_PARAM,
                   "overlap");
    EXPECT_REFUSED(smem_bm_copy(g_h, src, own, 64, SMEMB_COPY_G2G, SMEM_ASYNC_COPY_FLAG),
                   SM_INVALID_PARAM, "not inside");
    EXPECT_REFUSED(smem_bm_copy_2d(g_h, own, 100, win(g_rank, DRAM_SIZE - 300), 100, 100, 4,
                                   SMEMB_COPY_G2G, 0),
                   SM_INVALID_PARAM, "crosses");
    EXPECT_RC(smem_bm_wait(g_h), SM_OK);
    EXPECT_RC(smem_bm_wait(NULL), SM_INVALID_PARAM);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT(all_zero(own, 64 * KIB));
    /* Registered user memory. */
    EXPECT_RC(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)reg, sizeof reg), SM_OK);
    EXPECT_REFUSED(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)(reg + 100), 10),
                   SM_INVALID_PARAM, "overlaps");
    EXPECT_REFUSED(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)reg - 10, 11),
                   SM_INVALID_PARAM, "overlaps");
    EXPECT_RC(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)reg - 10, 10), SM_OK);
    EXPECT_RC(smem_bm_unregister_user_mem(g_h, (uint64_t)(uintptr_t)reg - 10), SM_OK);
    EXPECT_REFUSED(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)g_base[0] + stride, 4096),
                   SM_INVALID_PARAM, "GVA range");
    EXPECT_REFUSED(smem_bm_register_user_mem(g_h, (uint64_t)(uintptr_t)reg, 0), SM_INVALID_PARAM,
                   "not a range");
    EXPECT_REFUSED(smem_bm_register_user_mem(g_h, 0, 4096), SM_INVALID_PARAM, "not a range");
    EXPECT_REFUSED(smem_bm_unregister_user_mem(g_h, (uint64_t)(uintptr_t)reg + 1),
                   SM_OBJECT_NOT_EXISTS, "no registered range");
    EXPECT_REFUSED(smem_bm_register_user_mem(NULL, (uint64_t)(uintptr_t)reg, 1), SM_INVALID_PARAM,
                   "handle");
    /* A registered buffer is a copy source like any other. */
    fill(reg, sizeof reg, g_rank, g_rank, 9);
    EXPECT_RC(smem_bm_copy(g_h, reg, own + 8192, sizeof reg, SMEMB_COPY_H2G, 0), SM_OK);
    memset(reg, 0, sizeof reg);
    EXPECT_RC(smem_bm_copy(g_h, own + 8192, reg, sizeof reg, SMEMB_COPY_G2H, 0), SM_OK);
    verify(reg, sizeof reg, g_rank, g_rank, 9, "registered buffer round trip");
    EXPECT_RC(smem_bm_unregister_user_mem(g_h, (uint64_t)(uintptr_t)reg), SM_OK);
    EXPECT_REFUSED(smem_bm_unregister_user_mem(g_h, (uint64_t)(uintptr_t)reg),
                   SM_OBJECT_NOT_EXISTS, "no registered range");
}

static uint8_t g_data[MAX_RANKS][REGION];
static uint8_t g_async[MAX_RANKS][64 * KIB];
static uint8_t g_async1[MAX_RANKS][4 * KIB];
static uint8_t g_async2d[MAX_RANKS][16 * KIB];

/* Phase 2: a synchronous batch into every window (entries interleaved across owners), and
 * asynchronous batch / copy / copy_2d into every window, completed by one wait. */
static void write_all(void)
{
    static void *s[MAX_RANKS * ENTRIES], *d[MAX_RANKS * ENTRIES];
    static uint64_t n[MAX_RANKS * ENTRIES];
    uint32_t k = 0;
    int r, i;
    for (r = 0; r < g_ws; r++) {
        fill(g_data[r], REGION, g_rank, r, 1);
        fill(g_async[r], sizeof g_async[r], g_rank, r, 2);
        fill(g_async1[r], sizeof g_async1[r], g_rank, r, 3);
        fill(g_async2d[r], sizeof g_async2d[r], g_rank, r, 4);
    }
    for (i = 0; i < ENTRIES; i++) {
        for (r = 0; r < g_ws; r++) {
            s[k] = g_data[r] + (uint64_t)i * ENTRY;
            d[k] = win(r, 64 * KIB + (uint64_t)g_rank * REGION + (uint64_t)i * ENTRY);
            n[k] = ENTRY;
            k++;
        }
    }
    EXPECT_RC(batch(s, d, n, k, SMEMB_COPY_H2G, 0), SM_OK);
    k = 0;
    for (r = 0; r < g_ws; r++) {
        for (i = 0; i < 16; i++) {
            s[k] = g_async[r] + (uint64_t)i * ENTRY;
            d[k] = win(r, 2 * MIB + (uint64_t)g_rank * 64 * KIB + (uint64_t)i * ENTRY);
            n[k] = ENTRY;
            k++;
        }
    }
    EXPECT_RC(batch(s, d, n, k, SMEMB_COPY_L2G, SMEM_ASYNC_COPY_FLAG), SM_OK);
    for (r = 0; r < g_ws; r++) {
        EXPECT_RC(smem_bm_copy(g_h, g_async1[r], win(r, 2 * MIB + 256 * KIB + g_rank * 4 * KIB),
                               4 * KIB, SMEMB_COPY_H2G, SMEM_ASYNC_COPY_FLAG),
                  SM_OK);
        /* 8 rows of 1 KiB, 2 KiB apart locally, packed in the window. */
        EXPECT_RC(smem_bm_copy_2d(g_h, g_async2d[r], 2 * KIB,
                                  win(r, 2 * MIB + 512 * KIB + g_rank * 8 * KIB), KIB, KIB, 8,
                                  SMEMB_COPY_H2G, SMEM_ASYNC_COPY_FLAG),
                  SM_OK);
    }
    EXPECT_RC(smem_bm_wait(g_h), SM_OK);
    EXPECT_RC(smem_bm_wait(g_h), SM_OK);
}

/* Phase 3: read back with batches (synchronous G2H, asynchronous G2L), then the G2G copies. */
static void verify_and_g2g(void)
{
    static uint8_t back[MAX_RANKS][REGION];
    static uint8_t aback[MAX_RANKS][64 * KIB];
    static void *s[MAX_RANKS * ENTRIES], *d[MAX_RANKS * ENTRIES];
    static uint64_t n[MAX_RANKS * ENTRIES];
    uint8_t row[8 * KIB];
    uint32_t k = 0;
    int r, i, from = (g_rank + 1) % g_ws, to = (g_rank + 2) % g_ws;
    memset(back, 0, sizeof back);
    for (r = 0; r < g_ws; r++) {
        for (i = 0; i < ENTRIES; i++) {
            s[k] = win(r, 64 * KIB + (uint64_t)g_rank * REGION + (uint64_t)i * ENTRY);
            d[k] = back[r] + (uint64_t)i * ENTRY;
            n[k] = ENTRY;
            k++;
        }
    }
    EXPECT_RC(batch(s, d, n, k, SMEMB_COPY_G2H, 0), SM_OK);
    k = 0;
    for (r = 0; r < g_ws; r++) {
        verify(back[r], REGION, g_rank, r, 1, "synchronous batch");
        s[k] = win(r, 2 * MIB + (uint64_t)g_rank * 64 * KIB);
        d[k] = aback[r];
        n[k] = 64 * KIB;
        k++;
    }
    EXPECT_RC(batch(s, d, n, k, SMEMB_COPY_G2L, SMEM_ASYNC_COPY_FLAG), SM_OK);
    EXPECT_RC(smem_bm_wait(g_h), SM_OK);
    for (r = 0; r < g_ws; r++) {
        verify(aback[r], 64 * KIB, g_rank, r, 2, "asynchronous batch");
        EXPECT_RC(smem_bm_copy(g_h, win(r, 2 * MIB + 256 * KIB + g_rank * 4 * KIB), row, 4 * KIB,
                               SMEMB_COPY_G2H, 0),
                  SM_OK);
        verify(row, 4 * KIB, g_rank, r, 3, "asynchronous copy");
        EXPECT_RC(smem_bm_copy(g_h, win(r, 2 * MIB + 512 * KIB + g_rank * 8 * KIB), row, 8 * KIB,
                               SMEMB_COPY_G2H, 0),
                  SM_OK);
        for (i = 0; i < 8; i++) {
            if (memcmp(row + i * KIB, g_async2d[r] + i * 2 * KIB, KIB) != 0) {
                FAIL("asynchronous copy_2d: row %d in rank %d differs", i, r);
            }
        }
    }
    /* G2G: my region in `from` -> [1M, +256K) of `to`: the first half as a batch of 32
     * entries, then one smem_bm_copy, then a copy_2d of 16 rows of 4 KiB (pitch = width). */
    k = 0;
    for (i = 0; i < ENTRIES / 2; i++) {
        s[k] = win(from, 64 * KIB + (uint64_t)g_rank * REGION + (uint64_t)i * ENTRY);
        d[k] = win(to, MIB + (uint64_t)i * ENTRY);
        n[k] = ENTRY;
        k++;
    }
    EXPECT_RC(batch(s, d, n, k, SMEMB_COPY_G2G, 0), SM_OK);
    EXPECT_RC(smem_bm_copy(g_h, win(from, 64 * KIB + (uint64_t)g_rank * REGION + REGION / 2),
                           win(to, MIB + REGION / 2), 16 * ENTRY, SMEMB_COPY_G2G, 0),
              SM_OK);
    EXPECT_RC(smem_bm_copy_2d(g_h, win(from, 64 * KIB + (uint64_t)g_rank * REGION + 48 * ENTRY),
                              ENTRY, win(to, MIB + 48 * ENTRY), ENTRY, ENTRY, 16, SMEMB_COPY_G2G,
                              0),
              SM_OK);
}

/* Phase 4: the G2G target holds my region of `from`. */
static void verify_g2g(void)
{
    static uint8_t back[REGION];
    int from = (g_rank + 1) % g_ws, to = (g_rank + 2) % g_ws;
    EXPECT_RC(smem_bm_copy(g_h, win(to, MIB), back, REGION, SMEMB_COPY_G2H, 0), SM_OK);
    verify(back, REGION, g_rank, from, 1, "G2G");
}

/* Rank 0 of "kill" mode: batches into rank 1 until rank 1 dies; every call returns. */
static void batches_into_dying_peer(void)
{
    static uint8_t buf[256][64 * KIB];
    static void *s[256], *d[256];
    static uint64_t n[256];
    double deadline = now_s() + WAIT_S;
    int32_t rc = SM_OK;
    int i, rounds = 0;
    for (i = 0; i < 256; i++) {
        s[i] = buf[i];
        d[i] = win(1, 64 * KIB + (uint64_t)(i % 48) * 64 * KIB);
        n[i] = 64 * KIB;
    }
    write_flag(1); /* rank 1 dies once it sees this */
    while (rc == SM_OK) {
        if (now_s() > deadline) {
            FAIL("batches into a dead peer still succeed after %d rounds", rounds);
        }
        rc = (rounds % 2) ? batch(s, d, n, 256, SMEMB_COPY_H2G, 0)
                          : batch(d, s, n, 256, SMEMB_COPY_G2H, 0);
        rounds++;
    }
    printf("rank 0: batch %d failed with %d: %s\n", rounds, (int)rc, smem_get_last_err_msg());
    EXPECT(rc == SM_IO_ERROR || rc == SM_OBJECT_NOT_EXISTS || rc == SM_TIMEOUT ||
           rc == SM_INVALID_PARAM || rc == SM_PROTOCOL_ERROR);
    /* Asynchronous: refused at once (window gone) or failed at wait; never a success. */
    rc = batch(s, d, n, 256, SMEMB_COPY_H2G, SMEM_ASYNC_COPY_FLAG);
    if (rc == SM_OK) {
        rc = smem_bm_wait(g_h);
    }
    printf("rank 0: asynchronous batch into the dead peer: %d: %s\n", (int)rc,
           smem_get_last_err_msg());
    EXPECT(rc != SM_OK);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT_RC(smem_bm_wait(g_h), SM_OK);
}

int main(int argc, char **argv)
{
    char url[64];
    int r, kill_mode;
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s RANK WORLD_SIZE PORT [kill]\n", argv[0]);
        return 2;
    }
    g_rank = atoi(argv[1]);
    g_ws = atoi(argv[2]);
    kill_mode = argc == 5 && strcmp(argv[4], "kill") == 0;
    if (g_ws < 2 || g_ws > MAX_RANKS || g_rank < 0 || g_rank >= g_ws || atoi(argv[3]) <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    alarm(240); /* last-resort deadline; the driver has its own */
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", atoi(argv[3]));
    start(url, (uint32_t)g_ws);
    if (kill_mode) {
        if (g_rank == 1) {
            write_flag(1);
            wait_flag(0, 1);
            pause_ms(50);
            raise(SIGKILL);
        }
        wait_flag(1, 1);
        batches_into_dying_peer();
    } else {
        check_gva_lookup();
        check_refusals();
        write_flag(1);
        wait_phase(1);
        write_all();
        write_flag(2);
        wait_phase(2);
        verify_and_g2g();
        write_flag(3);
        wait_phase(3);
        verify_g2g();
        write_flag(4);
        wait_phase(4);
        /* 5: this rank reads no other rank's flag any more; rank 0: 6 = everyone may go. */
        write_flag(5);
        if (g_rank == 0) {
            wait_phase(5);
            write_flag(6);
            for (r = 1; r < g_ws; r++) {
                wait_unreachable(r);
            }
        } else {
            wait_flag(0, 6);
        }
    }
    smem_bm_destroy(g_h);
    smem_bm_uninit(0);
    smem_uninit();
    printf("rank %d ok\n", g_rank);
    return 0;
}
