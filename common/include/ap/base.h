/* base: allocation wrappers, container-of, and always-on assertions. */
#ifndef AP_BASE_H
#define AP_BASE_H

#include <stddef.h>
#include <stdint.h>

/** Recover the owner of an embedded member (libuv handles, list nodes). */
#define AP_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/** Number of elements of a true array. */
#define AP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define AP_UNUSED(x) ((void)(x))

/**
 * Invariant check that stays on in release builds. Never use it on I/O
 * results, allocations or anything a peer sent: those are errors, not bugs.
 */
#define AP_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            ap_assert_fail(#cond, __FILE__, __LINE__, __func__);                                   \
        }                                                                                          \
    } while (0)

/** Report a failed assertion on stderr and abort. */
_Noreturn void ap_assert_fail(const char *expr, const char *file, int line, const char *func);

/** malloc() that callers must NULL-check; returns NULL for a 0 size too. */
void *ap_malloc(size_t size);

/** calloc() of n zeroed elements; NULL on overflow or exhaustion. */
void *ap_calloc(size_t n, size_t size);

/** realloc(); NULL on exhaustion, and then ptr is still valid. */
void *ap_realloc(void *ptr, size_t size);

/** free(); NULL is fine. */
void ap_free(void *ptr);

/**
 * Tune glibc malloc for a long-running server with a replicated store (docs/replication.md
 * "Memory"): keep freed heap instead of trimming it, and no fast bins. Call once, early.
 */
void ap_malloc_tune_server(void);

/** strdup(); NULL on exhaustion or when s is NULL. Caller frees. */
char *ap_strdup(const char *s);

/**
 * Copy at most dst_size-1 bytes of src into dst and terminate it.
 * Returns the length of src, so a result >= dst_size means it was cut.
 */
size_t ap_strlcpy(char *dst, const char *src, size_t dst_size);

#endif
