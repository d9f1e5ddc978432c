/* base: allocation wrappers, container-of, and always-on assertions. */
#include "ap/base.h"

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
