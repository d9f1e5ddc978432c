/* output: what the CLI prints: tables, "key: value" lines, pretty JSON, partial warnings. */
#ifndef CLI_OUTPUT_H
#define CLI_OUTPUT_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

/** Most columns of a table. */
#define OUTPUT_MAX_COLS 16

/** A table being filled: a header row and rows of cells, all copied. */
struct output_table;

/**
 * A table with these ncols (1..OUTPUT_MAX_COLS) headers (copied; printed as
 * given, callers pass capitals). Returns NULL when out of memory. The
 * caller frees it with output__table_free().
 */
struct output_table *output__table_new(const char *const *headers, size_t ncols);

/**
 * Append a row of ncols cells (copied; a NULL or empty cell prints as "-";
 * control characters print as '?'). Returns 0 or AP_ENOMEM.
 */
int output__table_add(struct output_table *t, const char *const *cells);

/**
 * Like output__table_add, but takes ncols cells allocated with ap_malloc
 * (output__cell) and frees them, also on failure; a NULL cell (an
 * allocation that failed) makes it return AP_ENOMEM without adding a row.
 */
int output__table_add_owned(struct output_table *t, char **cells);

/** Number of rows added so far. */
size_t output__table_rows(const struct output_table *t);

/**
 * Print the header and every row, each column padded to its widest cell
 * (counted in UTF-8 characters) plus two spaces, the last one unpadded.
 */
void output__table_print(const struct output_table *t, FILE *out);

/** Free t; NULL is fine. */
void output__table_free(struct output_table *t);

/**
 * A JSON value as a table cell, malloc'd (caller frees with ap_free):
 * NULL, null, "" and empty containers give "-"; strings print as is;
 * arrays as their items joined by ","; objects as "k=v" joined by ",";
 * containers nested deeper as compact JSON. NULL when out of memory.
 */
char *output__cell(const json_t *v);

/**
 * Print an object as "key: value" lines, values aligned, rendered like
 * output__cell but joined by spaces. A non-object prints as one cell.
 * Returns 0, or AP_ENOMEM.
 */
int output__kv(FILE *out, const json_t *v);

/**
 * Print v as indented JSON with its keys in the order received, and a
 * newline. Returns 0, or AP_ENOMEM.
 */
int output__json(FILE *out, const json_t *v);

/**
 * When doc is an object saying "partial": true, or holding a non-empty
 * "unreachable" array, print on err:
 * "warning: partial answer; unreachable: r2, r3". Returns 1 when it warned.
 */
int output__warn_partial(FILE *err, const json_t *doc);

#endif
