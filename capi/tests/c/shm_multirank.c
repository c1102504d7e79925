/*
 * shm_multirank.c - one rank of a multi-process SHM test, written against the SPEC API only.
 *
 *   shm_multirank RANK WORLD_SIZE PORT
 *
 * Driven by capi/tests/shm_multirank.rs, which starts WORLD_SIZE copies, each with a deadline,
 * and kills all of them when one fails. Rank 0 hosts the config store (startConfigStore, the
 * default) at tcp://127.0.0.1:PORT.
 *
 * Object 0: every rank contributes SIZE bytes; rank r's window is gva + r*SIZE, mapped
 * read/write in every process (all ranks are on this host).
 *   [0, 8)                      rank 0's window only: barrier-ordering counter (atomic)
 *   [8, 16)                     rank 0's window only: "leaving" counter of the teardown
 *   [1M + w*4K, 1M + (w+1)*4K)  slot written by rank w with plain stores
 *   [SIZE - 1]                  written by the owner (the last byte of a window is usable)
 *
 * Checks: init (repeat, different arguments), engines, argument errors, create, rank and
 * size, same gva everywhere (allgather), extra context (absent, set by rank 0, read by all,
 * truncated, length query), cross-process stores and loads, barrier ordering (no rank
 * leaves barrier k before every rank entered it: an atomic counter in rank 0's window must be
 * >= k*WORLD after barrier k), allgather of 64 B and 64 KiB (every byte), allgather size
 * mismatch (recvBuf untouched), reach (every rank MTE|SDMA, remoteRank out of range), destroy
 * and uses of a destroyed handle, uninit.
 */
#define _POSIX_C_SOURCE 200809L

#include "smem.h"
#include "smem_shm.h"
#include "logger_calls_back.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024ull * 1024ull)
#define SIZE (4 * MIB)
#define SLOT 4096ull
#define MAX_RANKS 16
#define ROUNDS 50
#define CTX_LEN 1000u
#define WAIT_S 60.0

static int g_rank = -1;

#define FAIL(...)                                                                   \
    do {                                                                            \
        fprintf(stderr, "rank %d: %s:%d: ", g_rank, __FILE__, __LINE__);            \
        fprintf(stderr, __VA_ARGS__);                                               \
        fprintf(stderr, " (last error: %s)\n", smem_get_last_err_msg());            \
        exit(1);                                                                    \
    } while (0)

#define EXPECT(cond)                         \
    do {                                     \
        if (!(cond)) {                       \
            FAIL("EXPECT failed: %s", #cond); \
        }                                    \
    } while (0)

#define EXPECT_RC(call, want)                                                  \
    do {                                                                       \
        int32_t rc_ = (call);                                                  \
        if (rc_ != (want)) {                                                   \
            FAIL("%s returned %d, expected %d", #call, (int)rc_, (int)(want)); \
        }                                                                      \
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

static int g_ws;
static smem_shm_t g_h;
static uint8_t *g_gva;

static uint8_t *win(int r, uint64_t off) { return g_gva + (uint64_t)r * SIZE + off; }
static uint64_t *counter(uint64_t off) { return (uint64_t *)(void *)win(0, off); }

static void check_init(const char *url)
{
    smem_shm_config_t c, other;
    EXPECT_RC(smem_shm_config_init(&c), SM_OK);
    EXPECT(c.shmInitTimeout == 120 && c.startConfigStore);
    c.shmInitTimeout = 60;
    c.shmCreateTimeout = 60;
    c.controlOperationTimeout = 30;
    EXPECT_RC(smem_shm_init(url, (uint32_t)g_ws, (uint32_t)g_rank, 0, &c), SM_OK);
    EXPECT_RC(smem_shm_init(url, (uint32_t)g_ws, (uint32_t)g_rank, 0, &c), SM_OK);
    other = c;
    other.controlOperationTimeout = 31;
    EXPECT_RC(smem_shm_init(url, (uint32_t)g_ws, (uint32_t)g_rank, 0, &other), SM_REPEAT_CALL);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT(smem_shm_query_support_data_operation() == (SMEMS_DATA_OP_MTE | SMEMS_DATA_OP_SDMA));
}

static void check_create_errors(void)
{
    void *gva = NULL;
    uint32_t ws = (uint32_t)g_ws, rk = (uint32_t)g_rank;
    /* Bad sizes. */
    EXPECT(smem_shm_create(1, ws, rk, 3 * MIB, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    EXPECT(strstr(smem_get_and_clear_last_err_msg(), "2 MiB") != NULL);
    EXPECT(smem_shm_create(1, ws, rk, 0, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    /* Id out of range. */
    EXPECT(smem_shm_create(64, ws, rk, SIZE, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    EXPECT(strstr(smem_get_and_clear_last_err_msg(), "id 64") != NULL);
    /* Rank out of range, rankSize beyond the world. */
    EXPECT(smem_shm_create(1, ws, ws, SIZE, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    EXPECT(smem_shm_create(1, ws + 1, rk, SIZE, SMEMS_DATA_OP_MTE, 0, &gva) == NULL);
    EXPECT(strstr(smem_get_and_clear_last_err_msg(), "worldSize") != NULL);
    /* No engine. */
    EXPECT(smem_shm_create(1, ws, rk, SIZE, (smem_shm_data_op_type)0, 0, &gva) == NULL);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT(gva == NULL);
}

static void check_create(void)
{
    void *gva = NULL;
    uint64_t mine, all[MAX_RANKS];
    int r;
    g_h = smem_shm_create(0, (uint32_t)g_ws, (uint32_t)g_rank, SIZE,
                          (smem_shm_data_op_type)(SMEMS_DATA_OP_MTE | SMEMS_DATA_OP_SDMA), 0,
                          &gva);
    if (g_h == NULL) {
        FAIL("smem_shm_create failed");
    }
    EXPECT(gva != NULL && ((uintptr_t)gva % (2 * MIB)) == 0);
    g_gva = (uint8_t *)gva;
    __atomic_store_n(&g_logger_shm, g_h, __ATOMIC_RELEASE);
    /* A second object with the same id in this process is refused. */
    EXPECT(smem_shm_create(0, (uint32_t)g_ws, (uint32_t)g_rank, SIZE, SMEMS_DATA_OP_MTE, 0,
                           &gva) == NULL);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT(smem_shm_get_global_rank(g_h) == (uint32_t)g_rank);
    EXPECT(smem_shm_get_global_rank_size(g_h) == (uint32_t)g_ws);
    /* Every rank got the same base. */
    mine = (uint64_t)(uintptr_t)g_gva;
    EXPECT_RC(smem_shm_control_allgather(g_h, (const char *)&mine, 8, (char *)all,
                                         (uint32_t)(8 * g_ws)),
              SM_OK);
    for (r = 0; r < g_ws; r++) {
        EXPECT(all[r] == mine);
    }
}

static void check_context(void)
{
    uint8_t ctx[CTX_LEN], buf[2 * CTX_LEN];
    uint32_t i;
    for (i = 0; i < CTX_LEN; i++) {
        ctx[i] = (uint8_t)(i * 13 + 5);
    }
    EXPECT_RC(smem_shm_get_extra_context(g_h, buf, sizeof buf), SM_OBJECT_NOT_EXISTS);
    (void)smem_get_and_clear_last_err_msg();
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    EXPECT_RC(smem_shm_set_extra_context(g_h, ctx, 0), SM_INVALID_PARAM);
    EXPECT_RC(smem_shm_set_extra_context(g_h, ctx, SMEM_SHM_EXTRA_CONTEXT_MAX + 1),
              SM_INVALID_PARAM);
    (void)smem_get_and_clear_last_err_msg();
    if (g_rank == 0) {
        EXPECT_RC(smem_shm_set_extra_context(g_h, ctx, CTX_LEN), SM_OK);
    }
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    EXPECT_RC(smem_shm_get_extra_context(g_h, NULL, 0), (int32_t)CTX_LEN);
    memset(buf, 0xEE, sizeof buf);
    EXPECT_RC(smem_shm_get_extra_context(g_h, buf, 10), (int32_t)CTX_LEN);
    EXPECT(memcmp(buf, ctx, 10) == 0 && buf[10] == 0xEE);
    EXPECT_RC(smem_shm_get_extra_context(g_h, buf, sizeof buf), (int32_t)CTX_LEN);
    EXPECT(memcmp(buf, ctx, CTX_LEN) == 0 && buf[CTX_LEN] == 0xEE);
}

static void check_loads_and_stores(void)
{
    int to, from;
    uint64_t i;
    for (to = 0; to < g_ws; to++) {
        uint8_t *slot = win(to, MIB + (uint64_t)g_rank * SLOT);
        for (i = 0; i < SLOT; i++) {
            slot[i] = pattern(g_rank, to, i, 1);
        }
    }
    *win(g_rank, SIZE - 1) = (uint8_t)(0xA0 + g_rank);
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    for (from = 0; from < g_ws; from++) {
        const uint8_t *slot = win(g_rank, MIB + (uint64_t)from * SLOT);
        for (i = 0; i < SLOT; i++) {
            if (slot[i] != pattern(from, g_rank, i, 1)) {
                FAIL("byte %llu of rank %d's store into my window is %u",
                     (unsigned long long)i, from, slot[i]);
            }
        }
        EXPECT(*win(from, SIZE - 1) == (uint8_t)(0xA0 + from));
    }
}

static void check_barrier_order(void)
{
    uint64_t *c = counter(0);
    uint64_t base, v, k, n = (uint64_t)g_ws;
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    base = __atomic_load_n(c, __ATOMIC_SEQ_CST);
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    for (k = 1; k <= ROUNDS; k++) {
        __atomic_fetch_add(c, 1, __ATOMIC_SEQ_CST);
        EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
        v = __atomic_load_n(c, __ATOMIC_SEQ_CST) - base;
        if (v < k * n || v > (k + 1) * n) {
            FAIL("after barrier %llu the counter is %llu: a rank left before all entered",
                 (unsigned long long)k, (unsigned long long)v);
        }
    }
}

static void check_allgather(uint32_t len)
{
    uint8_t *send = malloc(len);
    uint8_t *recv = malloc((size_t)len * (size_t)g_ws);
    uint32_t i;
    int r;
    EXPECT(send != NULL && recv != NULL);
    for (i = 0; i < len; i++) {
        send[i] = pattern(g_rank, 99, i, (int)len);
    }
    EXPECT_RC(smem_shm_control_allgather(g_h, (const char *)send, len, (char *)recv,
                                         len * (uint32_t)g_ws),
              SM_OK);
    for (r = 0; r < g_ws; r++) {
        for (i = 0; i < len; i++) {
            if (recv[(size_t)r * len + i] != pattern(r, 99, i, (int)len)) {
                FAIL("allgather %u: byte %u of rank %d is wrong", len, i, r);
            }
        }
    }
    /* recvSize != sendSize * rankSize: refused, recvBuf untouched. */
    memset(recv, 0x5A, (size_t)len * (size_t)g_ws);
    EXPECT_RC(smem_shm_control_allgather(g_h, (const char *)send, len, (char *)recv,
                                         len * (uint32_t)g_ws - 1),
              SM_INVALID_PARAM);
    EXPECT_RC(smem_shm_control_allgather(g_h, (const char *)send, len, (char *)recv,
                                         len * (uint32_t)(g_ws + 1)),
              SM_INVALID_PARAM);
    for (i = 0; i < len * (uint32_t)g_ws; i++) {
        EXPECT(recv[i] == 0x5A);
    }
    EXPECT_RC(smem_shm_control_allgather(g_h, (const char *)send, 0, (char *)recv, 0),
              SM_INVALID_PARAM);
    (void)smem_get_and_clear_last_err_msg();
    free(send);
    free(recv);
}

static void check_reach(void)
{
    uint32_t reach = 0xFFFF;
    int r;
    for (r = 0; r < g_ws; r++) {
        EXPECT_RC(smem_shm_topology_can_reach(g_h, (uint32_t)r, &reach), SM_OK);
        EXPECT(reach == (SMEMS_DATA_OP_MTE | SMEMS_DATA_OP_SDMA));
    }
    reach = 0xFFFF;
    EXPECT_RC(smem_shm_topology_can_reach(g_h, (uint32_t)g_ws, &reach), SM_INVALID_PARAM);
    EXPECT(reach == 0xFFFF);
    EXPECT(strstr(smem_get_and_clear_last_err_msg(), "remoteRank") != NULL);
}

/* Teardown: every rank but 0 counts itself out in rank 0's window, then destroys; rank 0 (the
 * store host) waits for all of them, then destroys and shuts the store down last. */
static void teardown(void)
{
    uint64_t *leaving = counter(8);
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OK);
    if (g_rank == 0) {
        double deadline = now_s() + WAIT_S;
        while (__atomic_load_n(leaving, __ATOMIC_SEQ_CST) < (uint64_t)(g_ws - 1)) {
            if (now_s() > deadline) {
                FAIL("the other ranks did not leave in time");
            }
            pause_ms(5);
        }
        pause_ms(300); /* let their destroy / uninit reach the store */
    } else {
        __atomic_fetch_add(leaving, 1, __ATOMIC_SEQ_CST);
    }
    EXPECT_RC(smem_shm_destroy(g_h, 0), SM_OK);
    EXPECT_RC(smem_shm_destroy(g_h, 0), SM_OBJECT_NOT_EXISTS);
    EXPECT_RC(smem_shm_control_barrier(g_h), SM_OBJECT_NOT_EXISTS);
    EXPECT(smem_shm_get_global_rank(g_h) == UINT32_MAX);
    (void)smem_get_and_clear_last_err_msg();
    smem_shm_uninit(0);
    smem_shm_uninit(0);
    EXPECT(smem_shm_get_global_rank_size(g_h) == UINT32_MAX);
    (void)smem_get_and_clear_last_err_msg();
}

int main(int argc, char **argv)
{
    char url[64];
    int port, logger;
    if (argc != 4) {
        fprintf(stderr, "usage: %s RANK WORLD_SIZE PORT\n", argv[0]);
        return 2;
    }
    g_rank = atoi(argv[1]);
    g_ws = atoi(argv[2]);
    port = atoi(argv[3]);
    if (g_ws < 2 || g_ws > MAX_RANKS || g_rank < 0 || g_rank >= g_ws || port <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    alarm(240); /* last-resort deadline; the driver has its own */
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    logger = logger_calls_back_install();

    check_init(url);
    check_create_errors();
    check_create();
    check_context();
    check_loads_and_stores();
    check_barrier_order();
    check_allgather(64);
    check_allgather(65536);
    check_reach();
    teardown();
    if (logger) {
        /* The whole job logged through the logger, debug records included. */
        EXPECT(logger_calls_back_records(0) > 0 && logger_calls_back_records(1) > 0);
        printf("rank %d: the logger took %lu debug and %lu info records\n", g_rank,
               logger_calls_back_records(0), logger_calls_back_records(1));
    }
    printf("rank %d ok\n", g_rank);
    return 0;
}
