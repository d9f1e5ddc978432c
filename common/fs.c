/* fs: small file-system helpers shared by the daemons and the CLI. */
#include "ap/fs.h"

#include "ap/base.h"
#include "ap/err.h"

#include <errno.h>
#include <limits.h>
#include <sys/stat.h>

int ap_fs_mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    if (ap_strlcpy(tmp, path, sizeof tmp) >= sizeof tmp) {
        return AP_EINVAL;
    }
    for (char *p = tmp + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
                return AP_EIO;
            }
            *p = '/';
        }
    }
    return (mkdir(tmp, 0755) != 0 && errno != EEXIST) ? AP_EIO : 0;
}
