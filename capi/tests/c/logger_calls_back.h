/*
 * logger_calls_back.h - an external logger that calls back into smem on every record.
 *
 * SPEC 2.1: the logger "may be called from any thread, never while an internal lock is held".
 * With SMEM_TEST_LOGGER_CALLS_BACK=1 in the environment, logger_calls_back_install() sets the
 * level to debug and installs a logger that, for every record, calls smem functions taking the
 * runtime's locks (init state, handle table, object slots): a record logged under one of them
 * would deadlock the process (the test's deadline then fails it). Included by the multirank
 * programs after their smem_bm.h / smem_shm.h (it calls the functions of the headers included
 * before it); they publish their live handle in g_logger_bm / g_logger_shm.
 */
#ifndef LOGGER_CALLS_BACK_H
#define LOGGER_CALLS_BACK_H

#include "smem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Handles the logger uses: the program's live object once it has one (written with
 * __atomic_store_n), else a forged one: a handle the runtime looks up under its locks. */
#ifdef SMEM_BM_H
static smem_bm_t g_logger_bm;
#endif
#ifdef SMEM_SHM_H
static smem_shm_t g_logger_shm;
#endif
static unsigned long g_logger_records[4];

static void logger_calls_back(int level, const char *msg)
{
    if (level >= 0 && level <= 3 && msg != NULL) {
        __atomic_fetch_add(&g_logger_records[level], 1, __ATOMIC_RELAXED);
    }
    /* Results do not matter (a failing call's own record goes to stderr, not back here);
     * returning at all does. */
#ifdef SMEM_BM_H
    {
        smem_bm_t bm = __atomic_load_n(&g_logger_bm, __ATOMIC_ACQUIRE);
        if (bm == NULL) {
            bm = (smem_bm_t)(uintptr_t)0x30009u;
        }
        (void)smem_bm_get_rank_id();   /* the init state */
        (void)smem_bm_ptr(bm, 0);      /* the handle table and the object's slot */
        (void)smem_bm_get_local_mem_size(bm);
    }
#endif
#ifdef SMEM_SHM_H
    {
        smem_shm_t shm = __atomic_load_n(&g_logger_shm, __ATOMIC_ACQUIRE);
        if (shm == NULL) {
            shm = (smem_shm_t)(uintptr_t)0x30009u;
        }
        (void)smem_shm_get_global_rank(shm); /* the init state and the handle table */
        (void)smem_shm_get_global_rank_size(shm);
        (void)smem_shm_query_support_data_operation();
    }
#endif
    (void)smem_set_log_level(0);
}

/* Installs the logger when SMEM_TEST_LOGGER_CALLS_BACK=1; returns whether it did. */
static int logger_calls_back_install(void)
{
    const char *on = getenv("SMEM_TEST_LOGGER_CALLS_BACK");
    if (on == NULL || strcmp(on, "1") != 0) {
        return 0;
    }
    return smem_set_extern_logger(logger_calls_back) == 0 && smem_set_log_level(0) == 0;
}

/* Records the logger received at `level` so far. */
static unsigned long logger_calls_back_records(int level)
{
    return __atomic_load_n(&g_logger_records[level], __ATOMIC_RELAXED);
}

#endif
