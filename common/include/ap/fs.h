/* fs: small file-system helpers shared by the daemons and the CLI. */
#ifndef AP_FS_H
#define AP_FS_H

/**
 * Create path and its missing parents (mode 0755), like `mkdir -p`.
 * Returns 0 (also when it already exists), AP_EINVAL for a path longer than
 * PATH_MAX, or AP_EIO with errno telling why.
 */
int ap_fs_mkdir_p(const char *path);

#endif
