/* base: allocation wrappers, container-of, and always-on assertions. */
#include "ap/base.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Noreturn void ap_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "level=fatal msg=assertion_failed expr=\"%s\" file=%s line=%d func=%s\n", expr,
            file, line, func);
    fflush(stderr);
    abort();
}

void *ap_malloc(size_t size)
{
    if (size == 0) {
        return NULL;
    }
    return malloc(size);
}

void *ap_calloc(size_t n, size_t size)
{
    if (n == 0 || size == 0) {
        return NULL;
    }
    return calloc(n, size);
}

void *ap_realloc(void *ptr, size_t size)
{
    if (size == 0) {
        return NULL;
    }
    return realloc(ptr, size);
}

void ap_free(void *ptr)
{
    free(ptr);
}

void ap_malloc_tune_server(void)
{
    /* Every applied command opens and releases a SQLite savepoint, whose free() would
     * otherwise hand the top of the heap back to the kernel (brk, then a TLB shootdown on
     * every core): 40% of a follower's time in a profile. */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_TOP_PAD, 16 * 1024 * 1024);
    /* Each request frees small blocks and allocates one of 1 KiB or more (a raft entry, an
     * answer), and such a malloc or free first consolidates every fast bin: 4-5% of the
     * leader's time. tcache still serves small blocks without a lock. */
    mallopt(M_MXFAST, 0);
}

char *ap_strdup(const char *s)
{
    if (s == NULL) {
        return NULL;
    }
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

size_t ap_strlcpy(char *dst, const char *src, size_t dst_size)
{
    size_t n = strlen(src);
    if (dst_size > 0) {
        size_t c = n < dst_size - 1 ? n : dst_size - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return n;
}
